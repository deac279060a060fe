//! The trust state a client checks the server's revocation status with, following its CRL
//! files: a client that runs for days refuses a server from the first new connection after the
//! operator replaced the CRL file with one that revokes it, without a restart.
//!
//! The files are followed as the client identity is ([`mtls_tls::follow`]): checked when each
//! new connection's server is verified; a changed file is loaded and checked (signed by a CA of
//! the client's, not older than the CRL of the same issuer in use:
//! [`mtls_verify::TrustState::check_not_older_than`], the servers' rollback check) before it is
//! used; a file that does not load or is refused is logged and the last good state stays.
//!
//! Connections already open are not verified again by a handshake: the trust state remembers
//! the servers its verifier accepted and [`ServerTrust::connection_epoch`] moves when one of
//! them stops being trusted (the CRL files are looked at then too, at most once a second), so
//! that pooled connections opened before are not used for another request
//! ([`crate::Client`], [`crate::pool::Pool`]); [`ServerTrust::lapsed`] tells the user of
//! what such a connection is still carrying (a streaming answer, an upgraded stream).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mtls_serve::recheck::ConnectionIdentity;
use mtls_tls::{FollowedFiles, Refreshed};
use mtls_verify::{RevocationOptions, RevocationSources, TrustState, VerifiedPeer};
use rustls_pki_types::CertificateDer;

use crate::Error;

/// How often the servers of open connections are checked again when the state's revision did
/// not move: a replaced CRL file is looked for then, and certificates and CRLs expire on their
/// own.
const SERVERS_RECHECK: Duration = Duration::from_secs(1);

/// Most servers remembered; beyond it the oldest is forgotten, and the next change of the state
/// moves the epoch (every connection is given up), since a forgotten server cannot be checked.
const MAX_SERVERS: usize = 256;

/// What the trust state is built from.
struct Inputs {
    crl_files: Vec<PathBuf>,
    roots: Vec<CertificateDer<'static>>,
    options: RevocationOptions,
    sources: RevocationSources,
}

/// The trust state of a client's server checks (CRL files and sources), following its CRL
/// files. Built by [`crate::ClientBuilder::tls_config_and_trust`].
pub struct ServerTrust {
    inputs: Inputs,
    state: FollowedFiles<Arc<TrustState>>,
    servers: Mutex<Servers>,
    /// The connection epoch, published for [`ServerTrust::lapsed`].
    epoch: tokio::sync::watch::Sender<u64>,
    /// Whether a task is looking once a second for those waiting on `epoch`.
    watching: Mutex<bool>,
}

/// The servers the verifier accepted since the connection epoch last moved.
#[derive(Default)]
struct Servers {
    /// Each with the verdict of its last check (made again only when the state's revision
    /// moved or something of its path expired: no decision is counted or logged twice).
    known: Vec<Arc<ConnectionIdentity<()>>>,
    /// The revision of the last look at all of them, and when it was.
    looked: Option<((u64, u64), Instant)>,
    /// A server was accepted under another revision than the last look's: look again.
    again: bool,
    /// A look is under way; the other callers go on with the epoch as it is meanwhile.
    looking: bool,
    /// A server was forgotten for room: it cannot be checked.
    forgot: bool,
    epoch: u64,
}

impl std::fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTrust")
            .field("crl_files", &self.inputs.crl_files)
            .field("roots", &self.inputs.roots.len())
            .finish()
    }
}

/// Ends a look, even one that panicked (else no look would ever start again).
struct Looking<'a>(&'a ServerTrust);

impl Drop for Looking<'_> {
    fn drop(&mut self) {
        self.0.servers().looking = false;
    }
}

impl ServerTrust {
    /// Loads the CRL files now (an error is the builder's).
    /// After `floor` (the state of the client this one replaces), CRLs older than the ones it
    /// used are refused from the start.
    pub(crate) fn new(
        crl_files: Vec<PathBuf>,
        roots: Vec<CertificateDer<'static>>,
        options: RevocationOptions,
        sources: RevocationSources,
        floor: Option<Arc<TrustState>>,
    ) -> Result<Self, Error> {
        let inputs = Inputs {
            crl_files: crl_files.clone(),
            roots,
            options,
            sources,
        };
        let state = FollowedFiles::new(crl_files, || inputs.load(floor.as_deref()))?;
        Ok(ServerTrust {
            inputs,
            state,
            servers: Mutex::default(),
            epoch: tokio::sync::watch::Sender::new(0),
            watching: Mutex::new(false),
        })
    }

    fn servers(&self) -> MutexGuard<'_, Servers> {
        // A panic while holding the lock leaves a list of chains, still usable.
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers a server the verifier accepted under `state` (see
    /// [`connection_epoch`](Self::connection_epoch)).
    pub(crate) fn accepted(&self, peer: Arc<VerifiedPeer>, state: &TrustState) {
        let mut s = self.servers();
        if s.looked.is_some_and(|(r, _)| r != state.revision()) {
            s.again = true;
        }
        let chain: &[CertificateDer<'static>] = peer.presented_chain();
        if s.known.iter().any(|k| k.chain() == Some(chain)) {
            return;
        }
        if s.known.len() >= MAX_SERVERS {
            s.known.remove(0);
            s.forgot = true;
        }
        s.known
            .push(Arc::new(ConnectionIdentity::verified(peer, state, |_| ())));
    }

    /// The epoch of the connections this trust state's verifier let open: it moves when a
    /// server accepted earlier is no longer trusted under the current state (revoked by a CRL
    /// file, the CA's feed or OCSP; expired; its CA gone), and the servers accepted until then
    /// are forgotten. A caller may ask before every request: the servers are looked at again
    /// when the state's revision moved and at most once a second otherwise (when the CRL files
    /// are looked at too), each verified again only when its verdict may have changed. While
    /// one caller looks, the others go on with the epoch as it was. A connection opened under
    /// an older epoch must not be used again: read the epoch before connecting.
    pub fn connection_epoch(&self) -> u64 {
        let (looked, again, epoch) = {
            let s = self.servers();
            (s.looked, s.again, s.epoch)
        };
        let recent = looked.is_some_and(|(_, at)| at.elapsed() < SERVERS_RECHECK);
        let state = if recent {
            self.state.in_use()
        } else {
            self.current()
        };
        let revision = state.revision();
        let moved = looked.is_none_or(|(r, _)| r != revision);
        if recent && !moved && !again {
            return epoch;
        }
        let known = {
            let mut s = self.servers();
            if s.looking {
                return s.epoch;
            }
            s.looking = true;
            s.again = false;
            s.known.clone()
        };
        let looking = Looking(self);
        let refused = known.iter().find_map(|k| k.current(&state).err());
        drop(looking);
        let mut s = self.servers();
        if refused.is_some() || (s.forgot && moved) {
            match refused {
                Some(reason) => tracing::warn!(
                    %reason,
                    "a server this client has connections to is no longer trusted: \
                     they are not used again"
                ),
                None => tracing::info!(
                    "the server checks changed and this client has had connections to more \
                     servers than it can check: they are not used again"
                ),
            }
            s.epoch = s.epoch.wrapping_add(1);
            s.known.clear();
            s.forgot = false;
            self.epoch.send_replace(s.epoch);
        }
        s.looked = Some((revision, Instant::now()));
        s.epoch
    }

    /// Resolves once connections opened at `epoch` must not be used any longer (the
    /// [`connection_epoch`](Self::connection_epoch) moved): for what one connection carries
    /// for long (a tunnel, a streaming answer), which no next request would stop. However many
    /// wait, one task looks once a second while any does (call inside a tokio runtime).
    pub async fn lapsed(self: &Arc<Self>, epoch: u64) {
        let mut moved = self.epoch.subscribe();
        self.watch_while_waited_for();
        let _ = moved.wait_for(|e| *e != epoch).await;
    }

    /// Starts the looking task unless one runs; it ends when nobody waits any more.
    fn watch_while_waited_for(self: &Arc<Self>) {
        let mut watching = self.watching.lock().unwrap_or_else(|e| e.into_inner());
        if *watching {
            return;
        }
        *watching = true;
        /// Clears `watching` however the task ends (a panic, a runtime shutting down):
        /// otherwise no task would ever look again and waiters would wait for ever.
        struct Ends(std::sync::Weak<ServerTrust>);
        impl Ends {
            fn disarm(&mut self) {
                self.0 = std::sync::Weak::new();
            }
        }
        impl Drop for Ends {
            fn drop(&mut self) {
                if let Some(trust) = self.0.upgrade() {
                    *trust.watching.lock().unwrap_or_else(|e| e.into_inner()) = false;
                }
            }
        }
        let mut ends = Ends(Arc::downgrade(self));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SERVERS_RECHECK).await;
                let Some(trust) = ends.0.upgrade() else {
                    return;
                };
                // Publishes a move itself.
                trust.connection_epoch();
                // Under the lock waiters take after subscribing: none is left without a task.
                let mut watching = trust.watching.lock().unwrap_or_else(|e| e.into_inner());
                if trust.epoch.receiver_count() == 0 {
                    *watching = false;
                    // Ended normally: a task started after this must keep its flag.
                    ends.disarm();
                    return;
                }
            }
        });
    }

    /// The trust state for a new connection: CRL files changed since the last look are loaded
    /// first (see the module); one that does not load, or is older than the CRL in use, is
    /// logged (once per change) and the state in use stays.
    pub fn current(&self) -> Arc<TrustState> {
        let files = self.state.paths();
        let (state, outcome) = self
            .state
            .refresh(|previous: &Arc<TrustState>| self.inputs.load(Some(previous)));
        match outcome {
            Refreshed::Loaded => tracing::info!(
                crl = ?files,
                generation = state.generation(),
                "CRL files of the server checks reloaded"
            ),
            Refreshed::Failed {
                error,
                changed: true,
            } => tracing::warn!(
                crl = ?files,
                %error,
                "changed CRL files of the server checks refused; keeping the previous CRLs"
            ),
            Refreshed::Failed { changed: false, .. } | Refreshed::Unchanged => {}
        }
        state
    }

    /// Loads the CRL files now, changed or not (a reload loop's or SIGHUP's reload, which logs
    /// the outcome itself); on error the state in use stays.
    pub fn reload(&self) -> Result<Arc<TrustState>, Error> {
        self.state
            .reload(|previous: &Arc<TrustState>| self.inputs.load(Some(previous)))
    }

    /// The CRL files followed.
    pub fn crl_files(&self) -> &[PathBuf] {
        self.state.paths()
    }

    /// The CRL files' stamps taken just before the state in use was read (where a reload loop
    /// starts from).
    pub fn stamps(&self) -> mtls_tls::FileStamps {
        self.state.stamps()
    }
}

impl Inputs {
    /// Builds the trust state from the CRL files as they are now; after `previous`, CRLs
    /// older than the ones it uses are refused.
    fn load(&self, previous: Option<&TrustState>) -> Result<Arc<TrustState>, Error> {
        let crls = mtls_tls::load_crls(&self.crl_files)?;
        let generation = previous.map_or(0, |p| p.generation().wrapping_add(1));
        let refused = |e: mtls_verify::TrustError| Error::Config(format!("server revocation: {e}"));
        let mut state = TrustState::new(generation, self.roots.clone(), &crls, self.options)
            .map_err(refused)?
            .with_purpose(mtls_verify::Purpose::Server)
            .with_sources(&self.sources);
        if let Some(previous) = previous {
            // Against every CRL series used so far, not only the previous generation's.
            state.check_not_older_than(previous).map_err(refused)?;
            state = state.following(previous);
        }
        Ok(Arc::new(state))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mtls_pki::revocation::{build_crl, RevokedEntry};
    use time::OffsetDateTime;

    /// The servers' CRL files replayed in two steps (first another CRL of the bundle, so the
    /// issuer's series leaves; then an old CRL of the issuer) are refused at the second, as
    /// the servers' own reloads refuse them.
    #[test]
    fn a_replay_in_two_steps_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = mtls_test_util::TestPki::new("server-trust-replay");
        let now = OffsetDateTime::now_utc();
        let server = pki.server(&["api.example"]);
        let listed = [RevokedEntry {
            serial: server.cert.serial.clone(),
            revoked_at: now,
            reason: None,
        }];
        let crl_file = dir.path().join("crl.pem");
        let write = |der: rustls_pki_types::CertificateRevocationListDer<'static>| {
            std::fs::write(&crl_file, mtls_pki::pem_io::encode("X509 CRL", &der)).unwrap();
        };
        let inputs = Inputs {
            crl_files: vec![crl_file.clone()],
            roots: vec![pki.root_der(), pki.intermediate_der()],
            options: RevocationOptions::default(),
            sources: RevocationSources::default(),
        };
        write(build_crl(&pki.intermediate, 5, now, time::Duration::days(1), &listed).unwrap());
        let first = inputs.load(None).unwrap();
        write(build_crl(&pki.root, 1, now, time::Duration::days(1), &[]).unwrap());
        let second = inputs.load(Some(&first)).unwrap();
        write(build_crl(&pki.intermediate, 4, now, time::Duration::days(1), &[]).unwrap());
        let e = inputs.load(Some(&second)).err().unwrap().to_string();
        assert!(e.contains("older than the one in use"), "{e}");
    }
}
