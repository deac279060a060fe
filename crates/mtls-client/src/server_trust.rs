//! The trust state a client checks the server's revocation status with, following its CRL
//! files: a client that runs for days refuses a server from the first new connection after the
//! operator replaced the CRL file with one that revokes it, without a restart.
//!
//! The files are followed as the client identity is ([`mtls_tls::follow`]): checked when each
//! new connection's server is verified; a changed file is loaded and checked (signed by a CA of
//! the client's, not older than the CRL of the same issuer in use:
//! [`mtls_verify::TrustState::check_not_older_than`], the servers' rollback check) before it is
//! used; a file that does not load or is refused is logged and the last good state stays.

use std::path::PathBuf;
use std::sync::Arc;

use mtls_tls::{FollowedFiles, Refreshed};
use mtls_verify::{RevocationOptions, RevocationSources, TrustState};
use rustls_pki_types::CertificateDer;

use crate::Error;

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
}

impl std::fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTrust")
            .field("crl_files", &self.inputs.crl_files)
            .field("roots", &self.inputs.roots.len())
            .finish()
    }
}

impl ServerTrust {
    /// Loads the CRL files now (an error is the builder's).
    pub(crate) fn new(
        crl_files: Vec<PathBuf>,
        roots: Vec<CertificateDer<'static>>,
        options: RevocationOptions,
        sources: RevocationSources,
    ) -> Result<Self, Error> {
        let inputs = Inputs {
            crl_files: crl_files.clone(),
            roots,
            options,
            sources,
        };
        let state = FollowedFiles::new(crl_files, || inputs.load(None))?;
        Ok(ServerTrust { inputs, state })
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
        let state = TrustState::new(generation, self.roots.clone(), &crls, self.options)
            .map_err(refused)?
            .with_purpose(mtls_verify::Purpose::Server)
            .with_sources(&self.sources);
        if let Some(previous) = previous {
            state.check_not_older_than(previous).map_err(refused)?;
        }
        Ok(Arc::new(state))
    }
}
