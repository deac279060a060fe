//! Clients whose certificates expire soon, as a server sees them connect: a WARN line the
//! first time each such certificate connects, and the recent ones for a metric
//! (`mtls_client_certificate_not_after_seconds`). A renewal that failed shows days before the
//! outage, for certificates no inventory of this CA lists too (another CA's, a copied one).
//!
//! Bounded: at most [`KEPT`] certificates (the soonest to expire kept), each forgotten a day
//! after it last connected. It does not refuse anything: expired certificates are refused by
//! the verifier.

use std::collections::BTreeMap;
use std::sync::Mutex;

use mtls_verify::VerifiedPeer;
use time::{Duration, OffsetDateTime};

/// How many expiring certificates are kept for the metric.
pub const KEPT: usize = 100;
/// A certificate not seen for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::days(1);

/// The expiring client certificates one server has seen (see the module).
#[derive(Debug)]
pub struct ExpiringClients {
    warn_within: Duration,
    seen: Mutex<BTreeMap<String, Seen>>,
}

#[derive(Clone, Debug)]
struct Seen {
    subject: String,
    not_after: OffsetDateTime,
    last: OffsetDateTime,
}

/// One expiring certificate, as the metric shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiring {
    /// Its subject.
    pub subject: String,
    /// Its serial (hex).
    pub serial: String,
    /// Its notAfter.
    pub not_after: OffsetDateTime,
}

impl ExpiringClients {
    /// Watches for certificates that expire within `warn_within` of a connection (zero: none).
    pub fn new(warn_within: std::time::Duration) -> Self {
        ExpiringClients {
            warn_within: Duration::try_from(warn_within).unwrap_or(Duration::MAX),
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Notes that `peer` connected to `listener` at `now`: logged the first time its
    /// certificate is seen within the warning window, kept for the metric.
    pub fn note(&self, listener: &str, peer: &VerifiedPeer, now: OffsetDateTime) {
        let not_after = peer.not_after();
        if self.warn_within.is_zero() || not_after - now > self.warn_within {
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
            "a client certificate expires soon: renew it"
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

    /// The certificates seen within the last day that expire within the window, soonest first.
    pub fn recent(&self, now: OffsetDateTime) -> Vec<Expiring> {
        let Ok(mut seen) = self.seen.lock() else {
            return Vec::new();
        };
        seen.retain(|_, s| now - s.last < FORGET_AFTER);
        let mut v: Vec<Expiring> = seen
            .iter()
            .map(|(serial, s)| Expiring {
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

    /// A verified client whose certificate ends `left` after `now`.
    fn peer(
        pki: &mtls_test_util::TestPki,
        state: &TrustState,
        cn: &str,
        now: OffsetDateTime,
        left: Duration,
    ) -> std::sync::Arc<VerifiedPeer> {
        let issued_at = now - Duration::days(1);
        let leaf = pki.leaf_at(
            Profile::Client,
            cn,
            &[],
            issued_at,
            left + Duration::days(1),
        );
        state
            .verify_client(&leaf.cert.der, &[pki.intermediate_der()], now)
            .unwrap()
    }

    #[test]
    fn certificates_within_the_window_are_kept_once_and_forgotten_after_a_day() {
        let pki = mtls_test_util::TestPki::new("exp");
        let state =
            TrustState::new(1, vec![pki.root_der()], &[], RevocationOptions::default()).unwrap();
        let now = OffsetDateTime::now_utc();
        let soon = peer(&pki, &state, "soon", now, Duration::days(3));
        let later = peer(&pki, &state, "later", now, Duration::days(30));
        let sooner = peer(&pki, &state, "sooner", now, Duration::hours(5));
        let w = ExpiringClients::new(std::time::Duration::from_secs(7 * 86_400));
        for p in [&soon, &later, &sooner, &soon] {
            w.note("l", p, now);
        }
        let names = |v: Vec<Expiring>| v.into_iter().map(|e| e.subject).collect::<Vec<_>>();
        assert_eq!(names(w.recent(now)), ["CN=sooner", "CN=soon"]);
        // Seen again later: kept from then on.
        w.note("l", &soon, now + Duration::hours(20));
        assert_eq!(names(w.recent(now + Duration::hours(30))), ["CN=soon"]);
        assert!(w.recent(now + Duration::hours(45)).is_empty());
        // A zero window watches nothing.
        let off = ExpiringClients::new(std::time::Duration::ZERO);
        off.note("l", &sooner, now);
        assert!(off.recent(now).is_empty());
    }

    #[test]
    fn when_full_the_soonest_to_expire_are_kept() {
        let pki = mtls_test_util::TestPki::new("full");
        let state =
            TrustState::new(1, vec![pki.root_der()], &[], RevocationOptions::default()).unwrap();
        let now = OffsetDateTime::now_utc();
        let w = ExpiringClients::new(std::time::Duration::from_secs(30 * 86_400));
        for i in 0..KEPT {
            let left = Duration::days(10) + Duration::minutes(i as i64);
            w.note("l", &peer(&pki, &state, &format!("c{i}"), now, left), now);
        }
        let latest = w.recent(now).last().cloned().unwrap();
        w.note(
            "l",
            &peer(&pki, &state, "urgent", now, Duration::days(1)),
            now,
        );
        w.note(
            "l",
            &peer(&pki, &state, "relaxed", now, Duration::days(20)),
            now,
        );
        let kept = w.recent(now);
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].subject, "CN=urgent");
        assert!(!kept.contains(&latest), "the latest to expire made room");
        assert!(kept.iter().all(|e| e.subject != "CN=relaxed"));
    }
}
