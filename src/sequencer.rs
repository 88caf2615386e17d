//! Sequencers (Chubby's name): everything a downstream service needs to check a lock holder,
//! as one value with a stable string form, and the answer a check gives.
//!
//! The string form's grammar is in [`Sequencer`]'s documentation.

use std::fmt;
use std::str::FromStr;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::backend::{QueueEntry, QueueKind};
use crate::config::BackendKind;
use crate::error::{Error, Result};

/// The prefix of the string form: its version.
const VERSION: &str = "fl1";

/// What is escaped in names and keys: everything but `unreserved` (see the module docs).
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Who holds (or held) a lock: backend, lock name and queue kind, fencing token, the
/// holder's entry and session. Get one from [`LockGuard::sequencer`](crate::LockGuard::sequencer)
/// (or [`Leadership::sequencer`](crate::Leadership::sequencer)), pass its string form to
/// the service you protect (the CLI gives it to COMMAND as `FAIRLOCK_SEQUENCER`), and let
/// that service ask [`Client::check`](crate::Client::check) whether it is still current, or
/// compare fencing tokens itself (see [`Fence`](crate::Fence)).
///
/// The string form is stable and versioned (its grammar is below):
/// `fl1:etcd:lock:stock:4711:694d7f1b2e3c4a05:fairlock/stock/694d7f1b2e3c4a05-0`.
///
/// ```
/// let text = "fl1:etcd:lock:stock:4711:694d7f1b2e3c4a05:fairlock/stock/694d7f1b2e3c4a05-0";
/// let sequencer: fairlock::Sequencer = text.parse()?;
/// assert_eq!(sequencer.name(), "stock");
/// assert_eq!(sequencer.fencing_token(), 4711);
/// assert_eq!(sequencer.to_string(), text);
/// # Ok::<_, fairlock::Error>(())
/// ```
///
/// It names no cluster: check it against the cluster (and lock prefix) it came from.
///
/// # String form (version 1)
///
/// ```text
/// sequencer = "fl1:" backend ":" kind ":" name ":" token ":" session ":" key
/// backend   = "etcd" / "zookeeper" / "memory"
/// kind      = "lock" / "election" / "semaphore"   ; semaphore: a lease of a semaphore
/// name      = escaped               ; the lock's or election's name
/// token     = %x31-39 *DIGIT        ; the fencing token, decimal, 1 to 2^64-1
/// session   = 1*16 (DIGIT / %x61-66); the owning session (etcd lease, ZooKeeper session), hex
/// key       = escaped               ; the entry's backend key: …/NAME/ENTRY
/// escaped   = *(unreserved / "%" 2(DIGIT / %x41-46))   ; UTF-8 bytes, %XX in uppercase
/// unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~" / "/"
/// ```
///
/// Every byte of a name or key outside `unreserved` is escaped as `%XX` (so `:` and `%`
/// never appear unescaped), and only those: each sequencer has exactly one string form, and
/// parsing accepts exactly the strings `Display` writes. A later version of the form gets
/// a new prefix (`fl2:`); `fl1:` strings stay readable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Sequencer {
    backend: BackendKind,
    kind: QueueKind,
    name: String,
    token: u64,
    session: String,
    key: String,
    /// A semaphore's lease (kind `semaphore`): it holds while it exists.
    semaphore: bool,
}

impl Sequencer {
    pub(crate) fn new(
        backend: BackendKind,
        kind: QueueKind,
        name: &str,
        token: u64,
        session: String,
        key: &str,
    ) -> Self {
        Sequencer {
            backend,
            kind,
            name: name.to_owned(),
            token,
            session,
            key: key.to_owned(),
            semaphore: false,
        }
    }

    /// This sequencer, of a semaphore's lease if `semaphore`.
    pub(crate) fn of_semaphore(mut self, semaphore: bool) -> Self {
        self.semaphore = semaphore;
        self
    }

    /// Whether it is a semaphore's lease (kind `semaphore` in the string form; its
    /// [`kind`](Self::kind) is [`QueueKind::Lock`]). A lease holds while it exists, beside
    /// the semaphore's other leases: [`Client::check`](crate::Client::check) says
    /// [`Current`](SequencerStatus::Current) until it is gone, then
    /// [`Lost`](SequencerStatus::Lost), never `Superseded`.
    pub fn is_semaphore(&self) -> bool {
        self.semaphore
    }

    /// The backend the lock lives on.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// A lock's or an election's queue.
    pub fn kind(&self) -> QueueKind {
        self.kind
    }

    /// The lock's (or election's) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The holder's fencing token; see [`LockGuard::fencing_token`](crate::LockGuard::fencing_token).
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// The holder's session (etcd lease id, ZooKeeper session id, memory session), in hex.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The backend key (etcd) or node path (ZooKeeper) of the holder's queue entry.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The error for this sequencer, for `reason`.
    pub(crate) fn invalid(&self, reason: &'static str) -> Error {
        Error::InvalidSequencer {
            sequencer: self.to_string(),
            reason,
        }
    }

    /// The entry's name inside the queue whose keys start with `queue` (`…/NAME/`, with
    /// the slash): the check reads that queue, the one of this name under the checking
    /// client's prefix, so the key must be in it.
    pub(crate) fn entry_in(&self, queue: &str) -> Result<&str> {
        self.key
            .strip_prefix(queue)
            .filter(|entry| !entry.is_empty() && !entry.contains('/'))
            .ok_or_else(|| {
                self.invalid("its key is not in this client's queue of that name (another prefix?)")
            })
    }
}

impl fmt::Display for Sequencer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VERSION}:{}:{}:{}:{}:{}:{}",
            self.backend.name(),
            if self.semaphore {
                "semaphore"
            } else {
                self.kind.name()
            },
            utf8_percent_encode(&self.name, ESCAPED),
            self.token,
            self.session,
            utf8_percent_encode(&self.key, ESCAPED),
        )
    }
}

/// Parses the string form; see [`Sequencer`] for the grammar.
///
/// # Errors
/// [`Error::InvalidSequencer`] saying what is wrong: another version, an unknown backend
/// or kind, a name [`validate_name`](crate::validate_name) refuses, a token that is not a
/// decimal number from 1, a session that is not hex, a key that is not an entry of the
/// named queue, an escape that is malformed or not canonical.
impl FromStr for Sequencer {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = |reason: &'static str| Error::InvalidSequencer {
            sequencer: text.to_owned(),
            reason,
        };
        let fields: Vec<&str> = text.split(':').collect();
        let [version, backend, kind, name, token, session, key] = fields[..] else {
            return Err(match fields[0] {
                VERSION => invalid("not 7 fields separated by `:`"),
                _ => invalid("not a sequencer of version 1 (`fl1:`)"),
            });
        };
        if version != VERSION {
            return Err(invalid("not a sequencer of version 1 (`fl1:`)"));
        }
        let backend = match backend {
            "etcd" => BackendKind::Etcd,
            "zookeeper" => BackendKind::Zookeeper,
            "memory" => BackendKind::Memory,
            _ => return Err(invalid("unknown backend (etcd, zookeeper or memory)")),
        };
        let (kind, semaphore) = match kind {
            "lock" => (QueueKind::Lock, false),
            "election" => (QueueKind::Election, false),
            "semaphore" => (QueueKind::Lock, true),
            _ => return Err(invalid("unknown kind (lock, election or semaphore)")),
        };
        let name = unescape(name).ok_or_else(|| invalid("the name is not canonically escaped"))?;
        if let Err(Error::InvalidName { reason, .. }) = crate::name::validate_name(&name) {
            return Err(invalid(reason));
        }
        let digits = token.starts_with(|c: char| ('1'..='9').contains(&c))
            && token.bytes().all(|b| b.is_ascii_digit());
        let token = match token.parse::<u64>() {
            Ok(token) if digits => token,
            _ => {
                return Err(invalid(
                    "the token is not a decimal number from 1 to 2^64-1",
                ))
            }
        };
        let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if session.is_empty() || session.len() > 16 || !session.bytes().all(hex) {
            return Err(invalid("the session is not 1 to 16 lowercase hex digits"));
        }
        let key = unescape(key).ok_or_else(|| invalid("the key is not canonically escaped"))?;
        let in_queue = key.rsplit_once('/').is_some_and(|(dir, entry)| {
            !entry.is_empty() && (dir == name || dir.ends_with(&format!("/{name}")))
        });
        if !in_queue {
            return Err(invalid(
                "the key is not an entry of the named queue (…/NAME/ENTRY)",
            ));
        }
        Ok(Sequencer {
            backend,
            kind,
            name,
            token,
            session: session.to_owned(),
            key,
            semaphore,
        })
    }
}

/// `text` decoded, if it is exactly what [`ESCAPED`] encoding writes for its decoding (so
/// malformed escapes, lowercase hex and needless escapes are refused).
fn unescape(text: &str) -> Option<String> {
    let decoded = percent_decode_str(text).decode_utf8().ok()?;
    let canonical = utf8_percent_encode(&decoded, ESCAPED).to_string() == text;
    canonical.then(|| decoded.into_owned())
}

impl From<Sequencer> for String {
    fn from(sequencer: Sequencer) -> String {
        sequencer.to_string()
    }
}

impl TryFrom<String> for Sequencer {
    type Error = Error;

    fn try_from(text: String) -> Result<Self> {
        text.parse()
    }
}

/// What [`Client::check`](crate::Client::check) found for a [`Sequencer`], in one
/// linearizable read of its queue.
///
/// The queue's *head* is its first entry: the holder (or leader). Entries only ever join at
/// the back, so an entry that held the lock heads its queue until it is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SequencerStatus {
    /// The sequencer's entry still exists (the same entry: same create revision or czxid,
    /// the fencing token) and heads its queue: its holder holds the lock.
    Current,
    /// The entry no longer heads its queue and a later entry does (one with a greater
    /// fencing token): the lock has passed on to a newer holder.
    Superseded,
    /// Neither: the entry is gone and nobody newer holds the lock (the queue is empty, or
    /// what heads it is older than the entry, which happens only for the sequencer of a
    /// waiter that never held).
    Lost,
}

impl SequencerStatus {
    /// The status of `sequencer` in `queue` (listed in order; for an exclusive entry its
    /// head is enough; for a semaphore's lease, `queue` is its pool): current if its entry
    /// is there and holds (see [`QueueEntry::holds`]; a lease holds while it is there),
    /// superseded if a newer entry heads the queue.
    pub(crate) fn of_queue(sequencer: &Sequencer, queue: &[QueueEntry]) -> Self {
        let own = queue
            .iter()
            .find(|e| e.key == sequencer.key && e.fencing_token == sequencer.token);
        if sequencer.semaphore {
            return match own {
                Some(_) => SequencerStatus::Current,
                None => SequencerStatus::Lost,
            };
        }
        match (own, queue.first()) {
            (Some(own), _) if own.holds(queue) => SequencerStatus::Current,
            (_, Some(head)) if head.fencing_token > sequencer.token => SequencerStatus::Superseded,
            _ => SequencerStatus::Lost,
        }
    }
}

impl fmt::Display for SequencerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SequencerStatus::Current => "current",
            SequencerStatus::Superseded => "superseded",
            SequencerStatus::Lost => "lost",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sequencer(name: &str, key: &str) -> Sequencer {
        let session = "694d7f1b2e3c4a05".to_owned();
        Sequencer::new(BackendKind::Etcd, QueueKind::Lock, name, 4711, session, key)
    }

    #[test]
    fn displays_the_documented_form() {
        let s = sequencer("stock", "fairlock/stock/694d7f1b2e3c4a05-0");
        let text = "fl1:etcd:lock:stock:4711:694d7f1b2e3c4a05:fairlock/stock/694d7f1b2e3c4a05-0";
        assert_eq!(s.to_string(), text);
        assert_eq!(text.parse::<Sequencer>().unwrap(), s);
    }

    #[test]
    fn escapes_separators_percent_and_unicode() {
        let s = sequencer("a:b %c ü", "/p:x/a:b %c ü/_c_1-lock-0000000003");
        let text = s.to_string();
        assert_eq!(
            text,
            "fl1:etcd:lock:a%3Ab%20%25c%20%C3%BC:4711:694d7f1b2e3c4a05:\
             /p%3Ax/a%3Ab%20%25c%20%C3%BC/_c_1-lock-0000000003"
        );
        assert_eq!(text.parse::<Sequencer>().unwrap(), s);
    }

    #[test]
    fn every_kind_and_backend_round_trips() {
        for backend in [
            BackendKind::Etcd,
            BackendKind::Zookeeper,
            BackendKind::Memory,
        ] {
            for kind in [QueueKind::Lock, QueueKind::Election] {
                let s = Sequencer::new(backend, kind, "n", 1, "a".into(), "p/n/e");
                assert_eq!(s.to_string().parse::<Sequencer>().unwrap(), s);
            }
            let lease = Sequencer::new(backend, QueueKind::Lock, "n", 1, "a".into(), "p/n/e")
                .of_semaphore(true);
            let text = lease.to_string();
            assert!(text.contains(":semaphore:n:"), "{text}");
            let parsed = text.parse::<Sequencer>().unwrap();
            assert!(parsed.is_semaphore());
            assert_eq!(parsed, lease);
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        let s = sequencer("stock", "fairlock/stock/1");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<Sequencer>(&json).unwrap(), s);
        assert!(serde_json::from_str::<Sequencer>("\"fl1:etcd\"").is_err());
    }

    #[test]
    fn bad_input_gets_a_typed_error_naming_the_problem() {
        let ok = "fl1:etcd:lock:n:7:ab:p/n/e";
        ok.parse::<Sequencer>().unwrap();
        for (bad, why) in [
            ("", "version 1"),
            ("fl1:etcd:lock:n:7:ab", "7 fields"),
            ("fl1:etcd:lock:n:7:ab:p/n/e:x", "7 fields"),
            ("fl2:etcd:lock:n:7:ab:p/n/e", "version 1"),
            ("fl2:anything", "version 1"),
            ("FL1:etcd:lock:n:7:ab:p/n/e", "version 1"),
            ("fl1:redis:lock:n:7:ab:p/n/e", "backend"),
            ("fl1:zk:lock:n:7:ab:p/n/e", "backend"),
            ("fl1:etcd:mutex:n:7:ab:p/n/e", "kind"),
            ("fl1:etcd:lock::7:ab:p//e", "empty"),
            ("fl1:etcd:lock:a/b:7:ab:p/a/b/e", "contains `/`"),
            ("fl1:etcd:lock:a%2Fb:7:ab:p/a/b/e", "escaped"),
            ("fl1:etcd:lock:..:7:ab:p/../e", "not names"),
            ("fl1:etcd:lock:n%00:7:ab:p/n%00/e", "control"),
            ("fl1:etcd:lock:n:0:ab:p/n/e", "token"),
            ("fl1:etcd:lock:n:07:ab:p/n/e", "token"),
            ("fl1:etcd:lock:n:+7:ab:p/n/e", "token"),
            ("fl1:etcd:lock:n:-7:ab:p/n/e", "token"),
            ("fl1:etcd:lock:n:18446744073709551616:ab:p/n/e", "token"),
            ("fl1:etcd:lock:n:7::p/n/e", "session"),
            ("fl1:etcd:lock:n:7:AB:p/n/e", "session"),
            ("fl1:etcd:lock:n:7:0123456789abcdef0:p/n/e", "session"),
            ("fl1:etcd:lock:n:7:xy:p/n/e", "session"),
            ("fl1:etcd:lock:n:7:ab:p/m/e", "entry of the named queue"),
            ("fl1:etcd:lock:n:7:ab:p/n/", "entry of the named queue"),
            ("fl1:etcd:lock:n:7:ab:pn/e", "entry of the named queue"),
            ("fl1:etcd:lock:n:7:ab:e", "entry of the named queue"),
            ("fl1:etcd:lock:n%:7:ab:p/n%/e", "escaped"),
            ("fl1:etcd:lock:n%3a:7:ab:p/n%3a/e", "escaped"),
            ("fl1:etcd:lock:n%41:7:ab:p/nA/e", "escaped"),
            ("fl1:etcd:lock:n:7:ab:p/n/%FF", "escaped"),
            ("fl1:etcd:lock:n:7:ab:p/n/a b", "escaped"),
        ] {
            match bad.parse::<Sequencer>() {
                Err(Error::InvalidSequencer { sequencer, reason }) => {
                    assert_eq!(sequencer, bad);
                    assert!(reason.contains(why), "{bad:?}: {reason:?}, not {why:?}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    /// A queue entry with `key` and `token`; a reader's if its key says "read".
    fn entry(key: &str, token: u64) -> QueueEntry {
        QueueEntry {
            key: key.into(),
            fencing_token: token,
            session: String::new(),
            value: Vec::new(),
            shared: key.contains("read"),
        }
    }

    #[test]
    fn status_follows_the_head() {
        let s = sequencer("n", "p/n/own");
        let status = |head: Option<QueueEntry>| SequencerStatus::of_queue(&s, head.as_slice());
        assert_eq!(
            status(Some(entry("p/n/own", 4711))),
            SequencerStatus::Current
        );
        // The same key, but another entry (Go's Mutex reuses keys): not this holder.
        assert_eq!(
            status(Some(entry("p/n/own", 4800))),
            SequencerStatus::Superseded
        );
        assert_eq!(
            status(Some(entry("p/n/next", 4712))),
            SequencerStatus::Superseded
        );
        assert_eq!(status(None), SequencerStatus::Lost);
        assert_eq!(status(Some(entry("p/n/old", 4000))), SequencerStatus::Lost);
    }

    #[test]
    fn a_reader_is_current_behind_readers_only() {
        let s = sequencer("n", "p/n/read-own");
        let own = entry("p/n/read-own", 4711);
        let status = |queue: &[QueueEntry]| SequencerStatus::of_queue(&s, queue);
        let older_reader = entry("p/n/read-old", 4000);
        assert_eq!(
            status(&[older_reader.clone(), own.clone()]),
            SequencerStatus::Current
        );
        // Behind a writer it waits: it does not hold.
        let writer = entry("p/n/writer", 4500);
        assert_eq!(status(&[writer, own.clone()]), SequencerStatus::Lost);
        // Gone, and a newer writer holds.
        let newer = entry("p/n/newer", 4800);
        assert_eq!(status(&[newer]), SequencerStatus::Superseded);
        assert_eq!(status(&[older_reader]), SequencerStatus::Lost);
    }

    #[test]
    fn the_key_must_be_in_the_checked_queue() {
        let s = sequencer("n", "p/n/own");
        assert_eq!(s.entry_in("p/n/").unwrap(), "own");
        for queue in ["q/n/", "p/", "p/n/own", "p/n"] {
            assert!(
                matches!(s.entry_in(queue), Err(Error::InvalidSequencer { .. })),
                "{queue}"
            );
        }
    }

    /// Names as `validate_name` accepts them, with the characters that need escaping.
    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 :%_~.ü€\\-]{1,20}"
            .prop_filter("a valid name", |n| crate::name::validate_name(n).is_ok())
    }

    fn sequencers() -> impl Strategy<Value = Sequencer> {
        let backend = prop_oneof![
            Just(BackendKind::Etcd),
            Just(BackendKind::Zookeeper),
            Just(BackendKind::Memory)
        ];
        let kind = prop_oneof![Just(QueueKind::Lock), Just(QueueKind::Election)];
        (
            backend,
            kind,
            name(),
            1..=u64::MAX,
            "[0-9a-f]{1,16}",
            "(/?[^/]{0,12}/)?",
            "[^/]{1,24}",
        )
            .prop_map(|(backend, kind, name, token, session, prefix, entry)| {
                let key = format!("{prefix}{name}/{entry}");
                Sequencer::new(backend, kind, &name, token, session, &key)
            })
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(s in sequencers()) {
            let text = s.to_string();
            prop_assert_eq!(text.parse::<Sequencer>().unwrap(), s);
            // Separators only where the grammar puts them; nothing outside printable ASCII.
            prop_assert_eq!(text.matches(':').count(), 6);
            prop_assert!(text.bytes().all(|b| b.is_ascii_graphic()));
        }

        /// Near misses of valid strings (one printable character inserted or replaced):
        /// whatever still parses displays back as itself, so each sequencer has one form.
        #[test]
        fn parsing_accepts_only_canonical_strings(
            s in sequencers(),
            at in any::<prop::sample::Index>(),
            c in prop::char::range(' ', '~'),
            insert in any::<bool>(),
        ) {
            let mut text = s.to_string(); // ASCII: every index is a char boundary
            let i = at.index(text.len());
            if insert {
                text.insert(i, c);
            } else {
                text.replace_range(i..=i, &c.to_string());
            }
            if let Ok(parsed) = text.parse::<Sequencer>() {
                prop_assert_eq!(parsed.to_string(), text);
            }
        }
    }
}
