//! `Client::check` on ZooKeeper: a `sync`, then one multi-read of the queue node, its
//! children and the sequencer's own node (a semaphore's lease: of its node only).
//!
//! A server answers reads from its own copy, which may lag behind the leader; the `sync`
//! makes it catch up first, so the read that follows (on the same connection, in order)
//! sees every write committed before the check began. The multi-read is one snapshot.
//!
//! Whether the head is newer than the sequencer's node is decided without reading the
//! head's czxid (that would be a second read): within one incarnation of the queue node,
//! sequence numbers follow creation order; a queue node created after the sequencer's node
//! (its czxid is greater: the old one was deleted, as ZooKeeper deletes empty containers)
//! holds only newer nodes.

use zookeeper_client as zk;

use super::names;
use super::session::is_no_node;
use super::ZkClient;
use crate::backend::Side;
use crate::error::{Error, Result};
use crate::sequencer::{Sequencer, SequencerStatus};

pub(super) async fn check(client: &ZkClient, sequencer: &Sequencer) -> Result<SequencerStatus> {
    let queue = format!("{}/{}", client.settings.base, sequencer.name());
    let own = sequencer.entry_in(&format!("{queue}/"))?;
    if sequencer.is_semaphore() {
        return check_lease(client, sequencer, &queue, own).await;
    }
    let Some((own_sequence, shared)) = names::contender(own, sequencer.kind()) else {
        return Err(sequencer.invalid("its key is not a queue node of its kind"));
    };
    let key = sequencer.key();
    let read = client
        .request(|c| {
            let queue = &queue;
            async move {
                c.sync(queue).await?;
                let mut reader = c.new_multi_reader();
                reader.add_get_data(queue)?;
                reader.add_get_children(queue)?;
                reader.add_get_data(key)?;
                reader.commit().await
            }
        })
        .await;
    let results = match read {
        Err(Error::Backend { source, .. }) if is_no_node(&*source) => {
            return Ok(SequencerStatus::Lost); // no queue node: nobody holds
        }
        other => other?,
    };
    let [queue_node, children, own_node] =
        <[zk::MultiReadResult; 3]>::try_from(results).map_err(|_| Error::Backend {
            backend: "zookeeper",
            source: "a multi-read of three reads did not answer three".into(),
        })?;
    let Some(queue_created) = stat(queue_node)?.map(|s| s.czxid) else {
        return Ok(SequencerStatus::Lost);
    };
    let children = match children {
        zk::MultiReadResult::Children { children } => children,
        zk::MultiReadResult::Error {
            err: zk::Error::NoNode,
        } => Vec::new(),
        other => return Err(unexpected(other)),
    };
    let token = sequencer.fencing_token();
    let own_exists = stat(own_node)?.is_some_and(|s| s.czxid as u64 == token);
    let contenders = names::contenders(&children, sequencer.kind());
    let Some(&(head_sequence, head)) = contenders.first() else {
        return Ok(SequencerStatus::Lost);
    };
    // A reader holds while no exclusive contender is ahead of it.
    let holds = match shared {
        false => head == own,
        true => !names::blocking(&children, sequencer.kind(), Side::Read)
            .any(|(sequence, _)| names::precedes(sequence, own_sequence)),
    };
    Ok(if own_exists && holds {
        SequencerStatus::Current
    } else if queue_created as u64 > token || names::precedes(own_sequence, head_sequence) {
        SequencerStatus::Superseded
    } else {
        SequencerStatus::Lost
    })
}

/// A semaphore's lease holds while it exists (beside the other leases): current while the
/// node `own` of the pool `pool` is there with the sequencer's czxid, lost otherwise (a
/// `sync` first, as above).
async fn check_lease(
    client: &ZkClient,
    sequencer: &Sequencer,
    pool: &str,
    own: &str,
) -> Result<SequencerStatus> {
    if !names::is_lease(own) {
        return Err(sequencer.invalid("its key is not a semaphore's lease"));
    }
    let key = sequencer.key();
    let read = client
        .request(|c| async move {
            c.sync(pool).await?;
            c.check_stat(key).await
        })
        .await;
    let token = sequencer.fencing_token();
    match read {
        Ok(Some(stat)) if stat.czxid as u64 == token => Ok(SequencerStatus::Current),
        Ok(_) => Ok(SequencerStatus::Lost),
        Err(Error::Backend { source, .. }) if is_no_node(&*source) => Ok(SequencerStatus::Lost),
        Err(e) => Err(e),
    }
}

/// The stat of a multi-read's `get_data`, `None` if the node does not exist.
fn stat(result: zk::MultiReadResult) -> Result<Option<zk::Stat>> {
    match result {
        zk::MultiReadResult::Data { stat, .. } => Ok(Some(stat)),
        zk::MultiReadResult::Error {
            err: zk::Error::NoNode,
        } => Ok(None),
        zk::MultiReadResult::Error { err } => Err(super::zk_error(err)),
        other => Err(unexpected(other)),
    }
}

fn unexpected(result: zk::MultiReadResult) -> Error {
    match result {
        zk::MultiReadResult::Error { err } => super::zk_error(err),
        other => Error::Backend {
            backend: "zookeeper",
            source: format!("unexpected multi-read answer {other:?}").into(),
        },
    }
}
