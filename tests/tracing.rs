//! The library's tracing: spans for acquire, hold and release, and events for what happens
//! to sessions and guards, captured by a small layer installed on the test's thread (the
//! tests run on tokio's current-thread runtime, so every task they spawn reports to it).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[cfg(any(feature = "etcd", feature = "zookeeper"))]
use common::proxy::Proxy;
#[cfg(feature = "etcd")]
use common::EtcdHarness;
#[cfg(feature = "zookeeper")]
use common::ZkHarness;
use common::{eventually, soon, unique, Harness, MemoryHarness};
use fairlock::LostReason;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Field values as text.
type Fields = BTreeMap<String, String>;

/// A span as the capture saw it, with the fields recorded on it until it closed.
#[derive(Clone, Debug)]
struct SpanRecord {
    name: &'static str,
    target: String,
    fields: Fields,
}

/// An event, with the spans it happened in (innermost first).
#[derive(Clone, Debug)]
struct EventRecord {
    level: Level,
    target: String,
    message: String,
    fields: Fields,
    scope: Vec<SpanRecord>,
}

#[derive(Default)]
struct Captured {
    /// Spans at their close (their fields then final).
    closed: Vec<SpanRecord>,
    events: Vec<EventRecord>,
}

/// Records every span and event fairlock emits.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Captured>>);

impl Capture {
    /// Installs the capture on this thread until the returned guard is dropped.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    fn events(&self) -> Vec<EventRecord> {
        self.0.lock().unwrap().events.clone()
    }

    fn closed(&self) -> Vec<SpanRecord> {
        self.0.lock().unwrap().closed.clone()
    }

    /// The first event with `message` whose fields include all of `with`.
    fn event(&self, message: &str, with: &[(&str, &str)]) -> Option<EventRecord> {
        self.events()
            .into_iter()
            .find(|e| e.message == message && has(&e.fields, with))
    }

    /// Everything captured, as text (to look for what must never be there).
    #[cfg(feature = "etcd")]
    fn text(&self) -> String {
        let captured = self.0.lock().unwrap();
        format!("{:?}{:?}", captured.closed, captured.events)
    }
}

fn has(fields: &Fields, with: &[(&str, &str)]) -> bool {
    with.iter()
        .all(|(k, v)| fields.get(*k).map(String::as_str) == Some(*v))
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Visitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(&mut Visitor(fields));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        let scope = ctx
            .event_scope(event)
            .map(|scope| scope.map(|span| record_of(&span)).collect())
            .unwrap_or_default();
        self.0.lock().unwrap().events.push(EventRecord {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            message,
            fields,
            scope,
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            let record = record_of(&span);
            self.0.lock().unwrap().closed.push(record);
        }
    }
}

fn record_of<S: for<'a> LookupSpan<'a>>(
    span: &tracing_subscriber::registry::SpanRef<'_, S>,
) -> SpanRecord {
    SpanRecord {
        name: span.name(),
        target: span.metadata().target().to_owned(),
        fields: span
            .extensions()
            .get::<Fields>()
            .cloned()
            .unwrap_or_default(),
    }
}

/// An acquisition and its release on memory://: the acquire span carries the name, the
/// backend, the mode and (once known) the key and token; the hold span the same; the
/// release span sits in the hold span, and "released" in both.
#[tokio::test]
async fn acquire_and_release_are_spans_with_name_key_and_token() {
    let capture = Capture::default();
    let _installed = capture.install();
    let h = MemoryHarness::new();
    let client = h.client().await;
    let name = unique("trace-acquire");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let (key, token) = (guard.key().to_owned(), guard.fencing_token().to_string());
    guard.release().await.unwrap();
    drop(client);

    let who = [
        ("name", name.as_str()),
        ("key", key.as_str()),
        ("token", token.as_str()),
    ];
    let acquired = capture
        .event("acquired", &who)
        .unwrap_or_else(|| panic!("no acquired event: {:?}", capture.events()));
    assert_eq!(acquired.level, Level::INFO);
    assert!(
        acquired.target.starts_with("fairlock"),
        "{}",
        acquired.target
    );
    assert_eq!(acquired.fields["backend"], "memory");
    assert_eq!(acquired.scope[0].name, "acquire", "{acquired:?}");

    let spans = capture.closed();
    let acquire = spans
        .iter()
        .find(|s| s.name == "acquire" && has(&s.fields, &who))
        .unwrap_or_else(|| panic!("no acquire span with key and token: {spans:?}"));
    assert!(acquire.target.starts_with("fairlock"));
    assert!(has(
        &acquire.fields,
        &[("backend", "memory"), ("kind", "lock"), ("mode", "wait")]
    ));
    // The hold span closes once nothing holds it any more (the guard, the task that
    // watches for its loss).
    eventually("hold span closed", || async {
        capture
            .closed()
            .iter()
            .any(|s| s.name == "hold" && has(&s.fields, &who))
    })
    .await;
    let spans = capture.closed();
    let hold = spans
        .iter()
        .find(|s| s.name == "hold" && has(&s.fields, &who))
        .unwrap_or_else(|| panic!("no hold span: {spans:?}"));
    assert_eq!(hold.fields["backend"], "memory");

    let released = capture
        .event("released", &who)
        .unwrap_or_else(|| panic!("no released event: {:?}", capture.events()));
    assert_eq!(released.level, Level::INFO);
    let scope: Vec<_> = released.scope.iter().map(|s| s.name).collect();
    assert_eq!(scope[..2], ["release", "hold"], "{released:?}");
}

/// A campaign is an acquisition of kind "election", and leadership a hold.
#[tokio::test]
async fn a_campaign_is_an_election_acquisition() {
    let capture = Capture::default();
    let _installed = capture.install();
    let h = MemoryHarness::new();
    let client = h.client().await;
    let name = unique("trace-election");
    let leadership = client
        .election(&name)
        .unwrap()
        .campaign(b"me")
        .await
        .unwrap();
    let token = leadership.fencing_token().to_string();
    let acquired = capture
        .event(
            "acquired",
            &[("name", name.as_str()), ("token", token.as_str())],
        )
        .unwrap_or_else(|| panic!("{:?}", capture.events()));
    assert_eq!(acquired.fields["kind"], "election");
    leadership.resign().await.unwrap();
    let released = capture
        .event("released", &[("name", name.as_str())])
        .unwrap_or_else(|| panic!("{:?}", capture.events()));
    assert!(
        released
            .scope
            .iter()
            .any(|s| s.name == "hold" && s.fields["kind"] == "election"),
        "{released:?}"
    );
}

/// A try that finds the lock taken says so in a span with mode "try", and no "acquired".
#[tokio::test]
async fn a_failed_try_is_not_acquired() {
    let capture = Capture::default();
    let _installed = capture.install();
    let h = MemoryHarness::new();
    let (holder, other) = (h.client().await, h.client().await);
    let name = unique("trace-try");
    let _guard = holder.mutex(&name).unwrap().lock().await.unwrap();
    let before = capture.events().len();
    assert!(other
        .mutex(&name)
        .unwrap()
        .try_lock()
        .await
        .unwrap()
        .is_none());
    let events = &capture.events()[before..];
    let not = events
        .iter()
        .find(|e| e.message == "not acquired")
        .unwrap_or_else(|| panic!("{events:?}"));
    assert!(has(
        &not.fields,
        &[("name", name.as_str()), ("mode", "try")]
    ));
    assert!(
        !events.iter().any(|e| e.message == "acquired"),
        "{events:?}"
    );
}

/// A session ended from outside: the session's loss with its reason (warn), and the loss
/// of the lock it held, in the lock's hold span.
#[tokio::test]
async fn a_session_ended_from_outside_is_a_lost_event_with_its_reason() {
    let capture = Capture::default();
    let _installed = capture.install();
    let h = MemoryHarness::new();
    let client = h.client().await;
    let name = unique("trace-lost");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let session = client.session_id();
    h.expire_session(&client).await;
    assert_eq!(soon("lost", guard.lost()).await, LostReason::SessionExpired);
    let reason = LostReason::SessionExpired.to_string();
    eventually("session lost and lock lost events", || async {
        capture
            .event(
                "session lost",
                &[("session", session.as_str()), ("reason", reason.as_str())],
            )
            .is_some()
            && capture
                .event(
                    "lost",
                    &[("name", name.as_str()), ("reason", reason.as_str())],
                )
                .is_some()
    })
    .await;
    let session_lost = capture
        .event("session lost", &[("session", &session)])
        .unwrap();
    assert_eq!(session_lost.level, Level::WARN);
    assert_eq!(session_lost.fields["backend"], "memory");
    let lost = capture.event("lost", &[("name", &name)]).unwrap();
    assert_eq!(lost.level, Level::WARN);
    assert_eq!(lost.scope[0].name, "hold", "{lost:?}");
    assert_eq!(lost.fields["key"], guard.key());

    // The next acquisition opens a new session, and says which one it replaced.
    let again = client.mutex(&name).unwrap().lock().await.unwrap();
    let replaced = capture
        .event("session replaced by a new one", &[("previous", &session)])
        .unwrap_or_else(|| panic!("{:?}", capture.events()));
    assert_eq!(replaced.level, Level::INFO);
    assert_eq!(replaced.fields["session"], client.session_id());
    drop(again);
}

/// A guarded write after the loss is refused, and the refusal is recorded in the hold span.
#[tokio::test]
async fn a_refused_guarded_write_is_recorded_in_the_hold_span() {
    let capture = Capture::default();
    let _installed = capture.install();
    let h = MemoryHarness::new();
    let client = h.client().await;
    let name = unique("trace-refused");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let lost = guard.lost(); // watches the entry from now on
    h.delete_entry(guard.key()).await;
    soon("lost", lost).await;
    let write = fairlock::WriteOp::put(h.data_key(&name), b"x".to_vec());
    assert!(guard.guarded_write(&[write]).await.is_err());
    let refused = capture
        .event(
            "write refused: the lock is lost",
            &[("name", name.as_str()), ("write", "guarded write")],
        )
        .unwrap_or_else(|| panic!("{:?}", capture.events()));
    assert_eq!(refused.level, Level::WARN);
    assert_eq!(refused.fields["reason"], LostReason::Deleted.to_string());
    assert_eq!(refused.scope[0].name, "hold", "{refused:?}");
}

/// A proxy that cuts the connection, then restores it: "session suspended", then "session
/// resumed", both naming the session (lease, ZooKeeper session) and the backend.
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
async fn suspension_and_resumption_are_events(h: Arc<dyn Harness>, backend: &str) {
    let capture = Capture::default();
    let _installed = capture.install();
    let proxy = Proxy::start(&h.endpoint()).await;
    let client = fairlock::Client::connect(&h.url_via(&proxy.endpoint(), 10))
        .await
        .unwrap();
    let name = unique("trace-suspend");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let session = client.session_id();
    let with = [("backend", backend), ("session", session.as_str())];
    let lost = guard.lost(); // a watch on the own entry, to be re-created after the cut

    proxy.cut();
    eventually("suspended event", || async {
        capture
            .event(
                "session suspended: the backend has not confirmed it lately",
                &with,
            )
            .is_some()
    })
    .await;
    let suspended = capture
        .event(
            "session suspended: the backend has not confirmed it lately",
            &with,
        )
        .unwrap();
    assert_eq!(suspended.level, Level::INFO);
    proxy.restore();
    eventually("resumed event", || async {
        capture
            .event("session resumed: confirmed again, nothing lost", &with)
            .is_some()
    })
    .await;
    let resumed = capture
        .event("session resumed: confirmed again, nothing lost", &with)
        .unwrap();
    assert_eq!(resumed.level, Level::INFO);
    if backend == "etcd" {
        // The watch stream broke with the connection: its watch is created again.
        let recreated = "etcd watch stream opened; (re-)creating its watches";
        eventually("watch re-created", || async {
            capture
                .event(recreated, &[("reopened", "true"), ("watches", "1")])
                .is_some()
        })
        .await;
    }
    assert!(!lost.is_lost());
    assert!(!guard.is_lost());
    guard.release().await.unwrap();
    client.close().await.unwrap();
}

#[cfg(feature = "etcd")]
#[tokio::test]
async fn etcd_suspension_and_resumption_are_events() {
    suspension_and_resumption_are_events(Arc::new(EtcdHarness::new().await), "etcd").await;
}

#[cfg(feature = "zookeeper")]
#[tokio::test]
async fn zookeeper_suspension_and_resumption_are_events() {
    suspension_and_resumption_are_events(Arc::new(ZkHarness::new().await), "zookeeper").await;
}

/// A guard dropped while the connection is cut: its removal is retried in the background,
/// in the guard's hold span, until the connection is back and the entry gone.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn a_background_removal_that_fails_is_retried_and_says_so() {
    let capture = Capture::default();
    let _installed = capture.install();
    let h = EtcdHarness::new().await;
    let proxy = Proxy::start(&h.endpoint()).await;
    let url = format!("{}&request_timeout=1s", h.url_via(&proxy.endpoint(), 20));
    let client = fairlock::Client::connect(&url).await.unwrap();
    let name = unique("trace-cleanup");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let key = guard.key().to_owned();

    proxy.cut();
    drop(guard);
    assert!(capture
        .event(
            "released in the background (guard dropped)",
            &[("key", &key)]
        )
        .is_some());
    let retrying = "queue entry removal failed; retrying";
    eventually("removal retried", || async {
        capture.event(retrying, &[("key", &key)]).is_some()
    })
    .await;
    let retried = capture.event(retrying, &[("key", &key)]).unwrap();
    assert_eq!(retried.level, Level::DEBUG);
    assert!(
        retried.scope.iter().any(|s| s.name == "hold"),
        "{retried:?}"
    );
    proxy.restore();
    eventually("entry removed", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
    client.close().await.unwrap();
}

/// A guarded write into a silent network: "write outcome unknown" (or, if it was never
/// sent, "write failed"), in the hold span, with the error.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn an_unanswered_guarded_write_is_recorded() {
    let capture = Capture::default();
    let _installed = capture.install();
    let h = EtcdHarness::new().await;
    let proxy = Proxy::start(&h.endpoint()).await;
    let url = format!("{}&request_timeout=1s", h.url_via(&proxy.endpoint(), 30));
    let client = fairlock::Client::connect(&url).await.unwrap();
    let name = unique("trace-unanswered");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    proxy.cut();
    let write = fairlock::WriteOp::put(h.data_key(&name), b"x".to_vec());
    let result = soon("the guarded write", guard.guarded_write(&[write])).await;
    proxy.restore();
    let message = match &result {
        Err(fairlock::Error::OutcomeUnknown { .. }) => {
            "write outcome unknown: it may or may not have been applied"
        }
        Err(fairlock::Error::Timeout(_)) => "write failed; nothing was written",
        other => panic!("{other:?}"),
    };
    let recorded = capture
        .event(
            message,
            &[("name", name.as_str()), ("write", "guarded write")],
        )
        .unwrap_or_else(|| panic!("{:?}", capture.events()));
    assert_eq!(recorded.level, Level::WARN);
    assert_eq!(recorded.fields["error"], result.unwrap_err().to_string());
    assert_eq!(recorded.scope[0].name, "hold", "{recorded:?}");
    guard.release().await.unwrap();
    client.close().await.unwrap();
}

/// Credentials in the URL never reach a span or an event, whether the connection works or
/// not (an etcd without authentication refuses them: then this checks the connect path).
#[cfg(feature = "etcd")]
#[tokio::test]
async fn credentials_are_never_recorded() {
    let capture = Capture::default();
    let _installed = capture.install();
    let h = EtcdHarness::new().await;
    let password = "pw-never-traced-7c1d";
    let url = h
        .url(10)
        .replacen("etcd://", &format!("etcd://someone:{password}@"), 1);
    if let Ok(client) = fairlock::Client::connect(&url).await {
        if let Ok(guard) = client.mutex(&unique("trace-secret")).unwrap().lock().await {
            let _ = guard.release().await;
        }
        let _ = client.close().await;
    }
    // Something was traced (the capture works), and none of it holds the password.
    assert!(!capture.events().is_empty() || !capture.closed().is_empty());
    assert!(!capture.text().contains(password), "{}", capture.text());
}
