//! The exhaustive model check of the protocol (`fairlock_sim::protocol`): every
//! interleaving of three clients, with and without a Go-style peer, keeps every property;
//! each flaw put into the model is found.

use fairlock_sim::protocol::{Flaw, Protocol};
use stateright::{Checker, Model};

fn check(go_peer: bool, flaw: Option<Flaw>) -> impl Checker<Protocol> {
    Protocol { go_peer, flaw }
        .checker()
        .threads(2)
        .spawn_bfs()
        .join()
}

#[test]
fn every_interleaving_keeps_every_property() {
    for go_peer in [false, true] {
        let checker = check(go_peer, None);
        println!(
            "go peer {go_peer}: {} states ({} unique)",
            checker.state_count(),
            checker.unique_state_count()
        );
        checker.assert_properties();
        assert!(
            checker.unique_state_count() > 1000,
            "the model explores something"
        );
    }
}

#[test]
fn every_flaw_is_found() {
    let cases = [
        (Flaw::ExistenceOnly, true, "everyone finishes, nothing left"),
        (Flaw::NoPostWaitCheck, false, "only heads are granted"),
        (Flaw::CancelLeaks, false, "everyone finishes, nothing left"),
    ];
    for (flaw, go_peer, property) in cases {
        let checker = check(go_peer, Some(flaw));
        let found = checker.discovery(property);
        assert!(found.is_some(), "{flaw:?} not found by {property:?}");
        println!(
            "{flaw:?}: {property:?} fails: {:?}",
            found.map(|p| p.into_actions())
        );
    }
}
