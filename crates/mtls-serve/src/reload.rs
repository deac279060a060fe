//! The one reload loop: watch files (polled, following symlinks, so Kubernetes' symlink swaps
//! are seen), SIGHUP and an explicit trigger; on any of them, load and validate everything off
//! to the side and swap it in whole; on failure keep the last good state. Every attempt is
//! logged and counted in `mtls_reloads_total{result}`.
//!
//! What is reloaded is the caller's: a [`Reload`] implementation (the gateway's listeners, an
//! application's [`crate::tls::ReloadingServer`]).

use std::path::PathBuf;
use std::time::Duration;

use mtls_tls::FileStamps;
use tokio::sync::mpsc;

use crate::accept::Shutdown;
use crate::metrics::ReloadCounters;

/// Something that can be reloaded from files.
pub trait Reload: Send + 'static {
    /// Files whose change triggers a reload (asked again after every attempt: a new
    /// configuration may name other files).
    fn watched(&self) -> Vec<PathBuf>;

    /// Loads and validates everything, then swaps it in; on error nothing changes. `Ok` says
    /// what was reloaded, for the log.
    fn reload(&mut self) -> Result<String, String>;
}

/// Asks for a reload, as SIGHUP does.
#[derive(Clone, Debug)]
pub struct ReloadHandle(mpsc::UnboundedSender<()>);

impl ReloadHandle {
    /// Asks for a reload now (ignored once the loop has ended).
    pub fn reload(&self) {
        let _ = self.0.send(());
    }
}

/// How reloads are triggered and counted.
#[derive(Clone, Debug)]
pub struct ReloadOptions {
    /// How often the watched files are checked (default 1 s).
    pub poll: Duration,
    /// Reload on SIGHUP too (default true; the process owner decides, so libraries can opt out).
    pub on_sighup: bool,
    /// Counters of attempts by result (the default is registered nowhere).
    pub counters: ReloadCounters,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        ReloadOptions {
            poll: Duration::from_secs(1),
            on_sighup: true,
            counters: ReloadCounters::default(),
        }
    }
}

/// Runs the reload loop for `target` until `shutdown`.
pub fn spawn<R: Reload>(
    mut target: R,
    options: ReloadOptions,
    mut shutdown: Shutdown,
) -> ReloadHandle {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut hup = if options.on_sighup {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
        } else {
            None
        };
        let mut files = target.watched();
        let mut stamps = FileStamps::of(&files);
        loop {
            let hup_fut = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(options.poll) => {
                    if FileStamps::of(&files) == stamps { continue; }
                }
                _ = hup_fut => {}
                r = rx.recv() => { if r.is_none() { return; } }
                _ = shutdown.wait() => return,
            }
            match target.reload() {
                Ok(what) => {
                    options.counters.ok();
                    tracing::info!(%what, "reloaded");
                }
                Err(error) => {
                    options.counters.failed();
                    tracing::error!(%error, "reload failed; keeping the last good state");
                }
            }
            files = target.watched();
            stamps = FileStamps::of(&files);
        }
    });
    ReloadHandle(tx)
}
