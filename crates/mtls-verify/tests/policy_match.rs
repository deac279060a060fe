//! `match = "all"`: every `allow_*` list with entries must match, so `allow_cn` with
//! `allow_fingerprint` pins each name to its certificates (the fingerprint-and-CN check of the
//! usual Node.js guides); the default (`any`) admits on one match. Each refusal names the list
//! that did not match; contradictory policies are refused by `validate` and admit no one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use mtls_verify::{Policy, PolicyMatch, VerifiedPeer};
use time::OffsetDateTime;

#[test]
fn match_all_requires_every_list_and_names_the_one_that_failed() {
    let (root, state) = support::trusted_root("Root");
    let peer = |cn: &str| -> std::sync::Arc<VerifiedPeer> {
        let leaf = support::client_leaf(cn, &root);
        state
            .verify_client(&leaf, &[], OffsetDateTime::now_utc())
            .unwrap()
    };
    let (alice, alice_again, bob, mallory) =
        (peer("alice"), peer("alice"), peer("bob"), peer("mallory"));
    assert_ne!(alice.fingerprint(), alice_again.fingerprint());
    let pinned = Policy {
        matching: PolicyMatch::All,
        allow_cn: vec!["alice".into(), "bob".into()],
        allow_fingerprint: vec![
            *alice.fingerprint(),
            *bob.fingerprint(),
            *mallory.fingerprint(),
        ],
        ..Default::default()
    };
    pinned.validate().unwrap();
    assert_eq!(pinned.check(&alice), Ok(()));
    assert_eq!(pinned.check(&bob), Ok(()));
    // The right name on another certificate (a re-issued or forged one).
    let e = pinned.check(&alice_again).unwrap_err();
    assert!(
        e.contains("CN=alice") && e.contains("nothing in allow_fingerprint"),
        "{e}"
    );
    // A pinned certificate whose name is not listed.
    let e = pinned.check(&mallory).unwrap_err();
    assert!(
        e.contains("CN=mallory") && e.contains("nothing in allow_cn"),
        "{e}"
    );
    // The default admits on either list.
    let any = Policy {
        matching: PolicyMatch::Any,
        ..pinned.clone()
    };
    assert_eq!(any.check(&alice_again), Ok(()));
    assert_eq!(any.check(&mallory), Ok(()));
    // A key pinned in curl's form pins the name to the key (any certificate of it).
    let by_key = Policy {
        matching: PolicyMatch::All,
        allow_cn: vec!["alice".into()],
        allow_spki: vec![mtls_pki::KeyPin(*alice.spki_fingerprint())
            .to_string()
            .parse()
            .unwrap()],
        ..Default::default()
    };
    assert_eq!(by_key.check(&alice), Ok(()));
    let e = by_key.check(&alice_again).unwrap_err();
    assert!(e.contains("nothing in allow_spki"), "{e}");
    // allow_issuer is still required on top.
    let other_issuer = Policy {
        allow_issuer: vec!["CN=Another CA".parse().unwrap()],
        ..pinned.clone()
    };
    let e = other_issuer.check(&alice).unwrap_err();
    assert!(e.contains("issuer"), "{e}");
}

#[test]
fn contradictory_match_all_policies_are_refused_and_admit_no_one() {
    let (root, state) = support::trusted_root("Root");
    let alice = state
        .verify_client(
            &support::client_leaf("alice", &root),
            &[],
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let with_any_trusted = Policy {
        matching: PolicyMatch::All,
        allow_any_trusted: true,
        allow_cn: vec!["bob".into()],
        ..Default::default()
    };
    let e = with_any_trusted.validate().unwrap_err();
    assert!(e.contains("allow_any_trusted"), "{e}");
    // Not validated (a library user): fail closed.
    assert!(with_any_trusted.check(&alice).is_err());
    let nothing_to_combine = Policy {
        matching: PolicyMatch::All,
        allow_issuer: vec!["CN=Root".parse().unwrap()],
        ..Default::default()
    };
    assert!(nothing_to_combine.validate().is_err());
    assert!(nothing_to_combine.check(&alice).is_err());
    // The default with allow_any_trusted is valid and admits.
    let open = Policy {
        allow_any_trusted: true,
        ..Default::default()
    };
    open.validate().unwrap();
    assert_eq!(open.check(&alice), Ok(()));
}
