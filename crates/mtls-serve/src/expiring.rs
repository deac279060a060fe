//! Clients still connecting with a certificate whose renewal is overdue, as a server sees
//! them: a WARN line the first time each such certificate connects, and the recent ones for a
//! metric (`mtls_client_certificate_not_after_seconds`). A renewal that failed shows before the
//! outage, for certificates no inventory of this CA lists too (another CA's, a copied one).
//! "Overdue" is given by the caller (`mtls_client::renewal::default_overdue_after`: the last
//! tenth of the validity, which every renewal plan of a fraction has left by then), so
//! short-lived certificates renewed on time never show, whatever their hours left.
//!
//! Bounded: at most [`KEPT`] certificates (the soonest to expire kept), each forgotten a day
//! after it last connected. A healthy client costs one comparison per handshake (no lock). It
//! does not refuse anything: expired certificates are refused by the verifier.

use std::collections::BTreeMap;
use std::sync::Mutex;

use mtls_verify::VerifiedPeer;
use time::{Duration, OffsetDateTime};

/// How many overdue certificates are kept for the metric.
pub const KEPT: usize = 100;
/// A certificate not seen for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::days(1);

/// When a certificate valid from `not_before` to `not_after` counts as overdue for renewal.
pub type OverdueAfter = fn(OffsetDateTime, OffsetDateTime) -> OffsetDateTime;

/// The overdue client certificates one server has seen (see the module).
#[derive(Debug)]
pub struct OverdueClients {
    overdue_after: OverdueAfter,
    seen: Mutex<BTreeMap<String, Seen>>,
}

#[derive(Clone, Debug)]
struct Seen {
    subject: String,
    not_after: OffsetDateTime,
    last: OffsetDateTime,
}

/// One overdue certificate, as the metric shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overdue {
    /// Its subject.
    pub subject: String,
    /// Its serial (hex).
    pub serial: String,
    /// Its notAfter.
    pub not_after: OffsetDateTime,
}

impl OverdueClients {
    /// Lists the clients whose certificates are past `overdue_after` when they connect.
    pub fn new(overdue_after: OverdueAfter) -> Self {
        OverdueClients {
            overdue_after,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Notes that `peer` connected to `listener` at `now`: logged the first time its
    /// certificate is seen overdue, kept for the metric.
    pub fn note(&self, listener: &str, peer: &VerifiedPeer, now: OffsetDateTime) {
        let not_after = peer.not_after();
        if now <= (self.overdue_after)(peer.not_before(), not_after) {
            return;
        }
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        seen.retain(|_, s| now - s.last < FORGET_AFTER);
        let serial = peer.serial().to_string();
        if let Some(s) = seen.get_mut(&serial) {
            s.last = now;
            return;
        }
        if seen.len() >= KEPT {
            // Full: the certificate that expires last makes room, unless it is this one.
            let latest = seen
                .iter()
                .max_by_key(|(_, s)| s.not_after)
                .map(|(k, s)| (k.clone(), s.not_after));
            match latest {
                Some((k, t)) if t > not_after => {
                    seen.remove(&k);
                }
                _ => return,
            }
        }
        let left = not_after - now;
        tracing::warn!(
            listener,
            subject = peer.subject(),
            serial = %serial,
            not_after = %mtls_pki::rfc3339(&not_after),
            hours_left = left.whole_hours(),
            "a client connects with a certificate in the last tenth of its validity: renew it"
        );
        seen.insert(
            serial,
            Seen {
                subject: peer.subject().to_string(),
                not_after,
                last: now,
            },
        );
    }

    /// The overdue certificates seen within the last day, soonest to expire first.
    pub fn recent(&self, now: OffsetDateTime) -> Vec<Overdue> {
        let Ok(mut seen) = self.seen.lock() else {
            return Vec::new();
        };
        seen.retain(|_, s| now - s.last < FORGET_AFTER);
        let mut v: Vec<Overdue> = seen
            .iter()
            .map(|(serial, s)| Overdue {
                subject: s.subject.clone(),
                serial: serial.clone(),
                not_after: s.not_after,
            })
            .collect();
        v.sort_by_key(|e| e.not_after);
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mtls_pki::issue::Profile;
    use mtls_verify::{RevocationOptions, TrustState};

    /// The rule of the tests (as the gateway's): overdue in the last tenth of the validity.
    fn rule(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
        not_after - (not_after - not_before) / 10_i32
    }

    /// A verified client whose certificate was issued `age` before `now` for `lifetime`.
    fn peer(
        pki: &mtls_test_util::TestPki,
        state: &TrustState,
        cn: &str,
        now: OffsetDateTime,
        age: Duration,
        lifetime: Duration,
    ) -> std::sync::Arc<VerifiedPeer> {
        let leaf = pki.leaf_at(Profile::Client, cn, &[], now - age, lifetime);
        state
            .verify_client(&leaf.cert.der, &[pki.intermediate_der()], now)
            .unwrap()
    }

    #[test]
    fn overdue_certificates_are_kept_once_and_forgotten_after_a_day() {
        let pki = mtls_test_util::TestPki::new("exp");
        let state =
            TrustState::new(1, vec![pki.root_der()], &[], RevocationOptions::default()).unwrap();
        let now = OffsetDateTime::now_utc();
        let day = Duration::days(1);
        let overdue = peer(&pki, &state, "overdue", now, day * 85, day * 90);
        let on_time = peer(&pki, &state, "on-time", now, day * 50, day * 90);
        // A day-long certificate renewed every 16 hours: hours from its end, never overdue.
        let short = peer(&pki, &state, "short", now, Duration::hours(15), day);
        let short_late = peer(&pki, &state, "short-late", now, Duration::hours(22), day);
        let w = OverdueClients::new(rule);
        for p in [&overdue, &on_time, &short, &short_late, &overdue] {
            w.note("l", p, now);
        }
        let names = |v: Vec<Overdue>| v.into_iter().map(|e| e.subject).collect::<Vec<_>>();
        assert_eq!(names(w.recent(now)), ["CN=short-late", "CN=overdue"]);
        // Seen again later: kept from then on.
        w.note("l", &overdue, now + Duration::hours(20));
        assert_eq!(names(w.recent(now + Duration::hours(30))), ["CN=overdue"]);
        assert!(w.recent(now + Duration::hours(45)).is_empty());
    }

    #[test]
    fn when_full_the_soonest_to_expire_are_kept() {
        let pki = mtls_test_util::TestPki::new("full");
        let state =
            TrustState::new(1, vec![pki.root_der()], &[], RevocationOptions::default()).unwrap();
        let now = OffsetDateTime::now_utc();
        let w = OverdueClients::new(rule);
        let day = Duration::days(1);
        for i in 0..KEPT {
            let lifetime = day * 90 + Duration::minutes(i as i64);
            w.note(
                "l",
                &peer(&pki, &state, &format!("c{i}"), now, day * 85, lifetime),
                now,
            );
        }
        let latest = w.recent(now).last().cloned().unwrap();
        w.note(
            "l",
            &peer(&pki, &state, "urgent", now, day * 89, day * 90),
            now,
        );
        w.note(
            "l",
            &peer(&pki, &state, "relaxed", now, day * 85, day * 100),
            now,
        );
        let kept = w.recent(now);
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].subject, "CN=urgent");
        assert!(!kept.contains(&latest), "the latest to expire made room");
        assert!(kept.iter().all(|e| e.subject != "CN=relaxed"));
    }
}
