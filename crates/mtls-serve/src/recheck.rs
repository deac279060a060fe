//! Keeping open connections honest: a connection's identity is re-verified whenever the trust
//! state changed (a reload, a new CRL) and once its leaf or a loaded CRL has expired, so a
//! revoked or expired client cannot keep using a keep-alive, HTTP/2, WebSocket or TCP
//! connection it opened while it was still trusted.
//!
//! [`Generations`] announces each new trust generation; [`ConnectionIdentity`] answers "who is
//! this client under the current state" for request-oriented connections; [`until_refused`]
//! resolves when a long-lived stream must be cut.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mtls_verify::{Rejection, TrustState, VerifiedPeer};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::sync::watch;

/// How often a long-lived connection is re-checked without a reload: certificates and CRLs
/// expire on their own.
pub const RECHECK_EVERY: Duration = Duration::from_secs(60);

/// The current trust generation, announced to every connection that waits on it.
#[derive(Debug)]
pub struct Generations(watch::Sender<u64>);

impl Generations {
    /// Starts at generation `first`.
    pub fn new(first: u64) -> Self {
        Generations(watch::channel(first).0)
    }

    /// Announces a new generation (after the new state is in place).
    pub fn publish(&self, generation: u64) {
        self.0.send_replace(generation);
    }

    /// Wakes every waiting connection to re-check without a new generation: the trust state
    /// is the same, but something it consults changed (revocations pushed by the CA's feed).
    pub fn poke(&self) {
        self.0.send_modify(|_| {});
    }

    /// The latest announced generation.
    pub fn current(&self) -> u64 {
        *self.0.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Resolves with the reason once `verdict` refuses a connection's client: at once if the
/// generation moved since `checked` (the state the connection was admitted under), then after
/// every new generation and every [`RECHECK_EVERY`]. Never resolves while the client stays
/// allowed.
pub async fn until_refused(
    generations: &Generations,
    checked: u64,
    verdict: impl Fn() -> Result<(), String>,
) -> String {
    let mut rx = generations.subscribe();
    if *rx.borrow_and_update() != checked {
        rx.mark_changed();
    }
    loop {
        tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    // The server is gone; its drain ends the connection.
                    return std::future::pending().await;
                }
            }
            _ = tokio::time::sleep(RECHECK_EVERY) => {}
        }
        if let Err(reason) = verdict() {
            return reason;
        }
    }
}

/// What a connection knows of its client: the chain it presented and the identity derived
/// from it under some generation. `X` is whatever the server derives once per identity (the
/// gateway's encoded identity headers; nothing for applications).
pub struct ConnectionIdentity<X> {
    /// Shared with the verified identity (one copy per certificate, not per connection).
    chain: Option<Arc<[CertificateDer<'static>]>>,
    derive: fn(&Arc<VerifiedPeer>) -> X,
    /// The [`TrustState::revision`] the verdict was made under, and the verdict.
    checked: Mutex<((u64, u64), Verdict<X>)>,
}

/// A verified identity with what was derived from it, or why there is none.
pub type Verdict<X> = Result<(Arc<VerifiedPeer>, X), Rejection>;

impl<X: Clone> ConnectionIdentity<X> {
    /// Verifies `chain` under `trust` now (call it right after the handshake: resumed sessions
    /// skip the handshake verifier, and a reload may have happened during the handshake).
    pub fn new(
        chain: Option<&[CertificateDer<'_>]>,
        trust: &TrustState,
        derive: fn(&Arc<VerifiedPeer>) -> X,
    ) -> Self {
        let chain = chain.filter(|c| !c.is_empty());
        let verdict = Self::verify(chain, trust, derive);
        // A verified chain is kept once by its identity, for every connection presenting it;
        // only an unverified one (optional client auth) is copied here.
        let chain = match &verdict {
            Ok((peer, _)) => Some(peer.presented_chain().clone()),
            Err(_) => chain.map(|c| c.iter().map(|c| c.clone().into_owned()).collect()),
        };
        ConnectionIdentity {
            chain,
            derive,
            checked: Mutex::new((trust.revision(), verdict)),
        }
    }

    /// `peer`, verified under `trust` just now (by a handshake's certificate verifier): kept
    /// as it is, without a second verification.
    pub fn verified(
        peer: Arc<VerifiedPeer>,
        trust: &TrustState,
        derive: fn(&Arc<VerifiedPeer>) -> X,
    ) -> Self {
        let x = derive(&peer);
        ConnectionIdentity {
            chain: Some(peer.presented_chain().clone()),
            derive,
            checked: Mutex::new((trust.revision(), Ok((peer, x)))),
        }
    }

    fn verify(
        chain: Option<&[CertificateDer<'_>]>,
        trust: &TrustState,
        derive: fn(&Arc<VerifiedPeer>) -> X,
    ) -> Verdict<X> {
        trust.identify(chain, OffsetDateTime::now_utc()).map(|p| {
            let x = derive(&p);
            (p, x)
        })
    }

    /// Resolves with the reason once the client is no longer trusted under the state `trust`
    /// returns (revoked, expired, its CA gone), checked as [`until_refused`] does; never while it
    /// is. For cutting a connection at once rather than at its next request.
    pub async fn until_untrusted(
        &self,
        generations: &Generations,
        trust: impl Fn() -> Arc<TrustState>,
    ) -> String {
        until_refused(generations, self.generation(), || {
            self.current(&trust())
                .map(|_| ())
                .map_err(|r| r.to_string())
        })
        .await
    }

    /// Resolves once the client is trusted under the state `trust` returns, checked after
    /// every new generation (or poke) and every [`RECHECK_EVERY`]: a connection refused at
    /// first (optional client auth, a CRL not fetched yet) and accepted later is then watched
    /// by [`until_untrusted`](Self::until_untrusted) like any other.
    pub async fn until_trusted(
        &self,
        generations: &Generations,
        trust: impl Fn() -> Arc<TrustState>,
    ) {
        let mut rx = generations.subscribe();
        loop {
            if self.current(&trust()).is_ok() {
                return;
            }
            tokio::select! {
                r = rx.changed() => {
                    if r.is_err() {
                        return std::future::pending().await;
                    }
                }
                _ = tokio::time::sleep(RECHECK_EVERY) => {}
            }
        }
    }

    /// The generation the identity was last verified under.
    pub fn generation(&self) -> u64 {
        self.checked.lock().map(|g| g.0 .0).unwrap_or(0)
    }

    /// The presented chain, leaf first.
    pub fn chain(&self) -> Option<&[CertificateDer<'static>]> {
        self.chain.as_deref()
    }

    /// The identity under `trust`: the cached verdict while `trust` is the revision it was
    /// checked under (same generation, no new pushed revocations) and neither a certificate
    /// of the path (leaf, intermediate, root) nor a CRL has expired since; otherwise verified
    /// again.
    pub fn current(&self, trust: &TrustState) -> Verdict<X> {
        let Ok(mut guard) = self.checked.lock() else {
            return Err(Rejection::Other("internal error".into()));
        };
        let now = OffsetDateTime::now_utc();
        let expired = match &guard.1 {
            Ok((peer, _)) => {
                now > peer.path_not_after()
                    || trust
                        .crl_summaries()
                        .iter()
                        .any(|c| c.next_update.is_some_and(|n| now > n))
                    || trust
                        .pushed_revocations()
                        .is_some_and(|p| p.age(now).is_none_or(|a| a > p.max_age().as_secs()))
            }
            Err(_) => false,
        };
        if guard.0 != trust.revision() || expired {
            *guard = (
                trust.revision(),
                Self::verify(self.chain.as_deref(), trust, self.derive),
            );
        }
        guard.1.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mtls_pki::issue::new_intermediate;
    use mtls_pki::{KeyAlgorithm, PrivateKey, Subject};

    /// An open connection's identity stops being accepted when its intermediate expires,
    /// although the leaf is still valid (a CA that does not cap leaves at its own notAfter):
    /// the cached verdict covered the leaf's validity only.
    #[test]
    fn an_expired_intermediate_ends_the_cached_verdict() {
        let pki = mtls_test_util::TestPki::new("recheck");
        let now = OffsetDateTime::now_utc();
        // Expires in two seconds (whole seconds: notAfter has no fractions).
        let short = new_intermediate(
            &pki.root,
            &Subject::cn("Short-lived Intermediate"),
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
            now,
            time::Duration::seconds(2),
            0,
        )
        .unwrap();
        let short_pki = mtls_test_util::TestPki {
            root: pki.root,
            intermediate: short,
        };
        let (leaf, _key) = short_pki.custom_leaf(
            "client",
            vec![mtls_test_util::ExtendedKeyUsagePurpose::ClientAuth],
            now - time::Duration::hours(1),
            now + time::Duration::days(30),
        );
        let chain = [leaf, short_pki.intermediate_der()];
        let trust =
            TrustState::new(0, vec![short_pki.root_der()], &[], Default::default()).unwrap();
        let identity = ConnectionIdentity::new(Some(&chain), &trust, |_| ());
        assert!(identity.current(&trust).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(3100));
        assert!(
            identity.current(&trust).is_err(),
            "the path is no longer valid: its intermediate has expired"
        );
    }

    /// A client refused under one generation and trusted under the next is noticed: the
    /// wait ends when the new generation is announced, not at the periodic re-check.
    #[tokio::test]
    async fn until_trusted_ends_when_a_new_generation_trusts_the_client() {
        let pki = mtls_test_util::TestPki::new("later");
        let leaf = pki.client("client");
        let chain = [leaf.cert.der.clone(), pki.intermediate_der()];
        let other = mtls_test_util::TestPki::new("other");
        let refusing =
            Arc::new(TrustState::new(1, vec![other.root_der()], &[], Default::default()).unwrap());
        let trusting =
            Arc::new(TrustState::new(2, vec![pki.root_der()], &[], Default::default()).unwrap());
        let identity = Arc::new(ConnectionIdentity::new(Some(&chain), &refusing, |_| ()));
        assert!(identity.current(&refusing).is_err());
        let generations = Arc::new(Generations::new(1));
        let current = Arc::new(Mutex::new(refusing));
        let waiting = tokio::spawn({
            let (identity, generations, current) =
                (identity.clone(), generations.clone(), current.clone());
            async move {
                identity
                    .until_trusted(&generations, || current.lock().unwrap().clone())
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "still refused");
        *current.lock().unwrap() = trusting;
        generations.publish(2);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("trusted under the new generation")
            .unwrap();
    }
}
