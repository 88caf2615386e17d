//! Without the `metrics` feature: the recording calls of the generic layers, doing nothing.

use crate::lost::{LostReason, LostSignal};

#[derive(Clone, Copy)]
pub(crate) enum Outcome {
    Acquired,
    Busy,
    Timeout,
    Error,
}

pub(crate) struct Acquiring;

pub(crate) fn acquiring(_backend: &'static str, _kind: &'static str, _name: &str) -> Acquiring {
    Acquiring
}

impl Acquiring {
    pub(crate) fn finish(self, _outcome: Outcome) {}
}

pub(crate) fn held(_signal: LostSignal, _backend: &'static str, _kind: &'static str, _name: &str) {}

pub(crate) fn session_lost(_backend: &'static str, _reason: LostReason) {}

#[cfg_attr(not(any(feature = "etcd", feature = "zookeeper")), allow(dead_code))]
pub(crate) fn session_suspended(_backend: &'static str) {}
