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

    /// The [`watched`](Self::watched) files' stamps taken just before the state in use was
    /// read, if known: the loop starts from them, so a change between that first load and the
    /// start of the loop is not missed. `None`: stamped when the loop starts.
    fn loaded_stamps(&self) -> Option<FileStamps> {
        None
    }
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
    /// After a failed reload, how often the same files are tried again though they did not
    /// change (default 30 s): the fix may change no stamp (`chmod 600` on a key, a
    /// certificate whose notBefore is reached).
    pub retry_failed: Duration,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        ReloadOptions {
            poll: Duration::from_secs(1),
            on_sighup: true,
            counters: ReloadCounters::default(),
            retry_failed: Duration::from_secs(30),
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
        let mut stamps = target
            .loaded_stamps()
            .unwrap_or_else(|| FileStamps::of(&files));
        let mut failed_since: Option<std::time::Instant> = None;
        let mut last_error: Option<String> = None;
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
                    let retry = failed_since
                        .is_some_and(|at| at.elapsed() >= options.retry_failed);
                    if FileStamps::of(&files) == stamps && !retry { continue; }
                }
                _ = hup_fut => {}
                r = rx.recv() => { if r.is_none() { return; } }
                _ = shutdown.wait() => return,
            }
            // Stamped before the files are read: a file still being written when the reload
            // reads it (a failed reload, or a half-new state) changes again after this, and
            // the next poll reloads. Stamped after, its last change would be taken as seen.
            let before = FileStamps::of(&files);
            match target.reload() {
                Ok(what) => {
                    options.counters.ok();
                    tracing::info!(%what, "reloaded");
                    failed_since = None;
                    last_error = None;
                }
                Err(error) => {
                    options.counters.failed();
                    // Logged when it changes; the periodic retries of the same failure are
                    // counted, not repeated in the log.
                    if last_error.as_deref() != Some(error.as_str()) {
                        // (What could not be loaded keeps its last good state; the error
                        // says whether anything else was taken.)
                        tracing::error!(%error, "reload failed");
                    }
                    failed_since = Some(std::time::Instant::now());
                    last_error = Some(error);
                }
            }
            let now_watched = target.watched();
            if now_watched == files {
                stamps = before;
            } else {
                // A new configuration names other files, read by this reload: compare against
                // what they were before it (missing stamps make the next poll reload once
                // more, which is harmless).
                stamps = FileStamps::unknown();
                files = now_watched;
            }
        }
    });
    ReloadHandle(tx)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Its first reload finds the file still being written: the write finishes while the
    /// reload reads it, and the reload fails.
    struct WrittenDuringTheRead {
        path: PathBuf,
        calls: Arc<AtomicUsize>,
    }

    impl Reload for WrittenDuringTheRead {
        fn watched(&self) -> Vec<PathBuf> {
            vec![self.path.clone()]
        }

        fn reload(&mut self) -> Result<String, String> {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                std::fs::write(&self.path, b"-----BEGIN X509 CRL-----\ncomplete\n").unwrap();
                return Err("half-written".into());
            }
            Ok("reloaded".into())
        }
    }

    /// Fails until its file becomes readable by mode alone (`chmod`), which changes no stamp.
    struct FixedByChmod {
        path: PathBuf,
        calls: Arc<AtomicUsize>,
    }

    impl Reload for FixedByChmod {
        fn watched(&self) -> Vec<PathBuf> {
            vec![self.path.clone()]
        }

        fn reload(&mut self) -> Result<String, String> {
            use std::os::unix::fs::PermissionsExt;
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mode = std::fs::metadata(&self.path).unwrap().permissions().mode();
            if mode & 0o077 != 0 {
                return Err("readable by others".into());
            }
            Ok("reloaded".into())
        }
    }

    /// A failed reload is tried again though its files did not change, until it succeeds.
    #[tokio::test]
    async fn a_failed_reload_is_retried_until_it_succeeds() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.key");
        std::fs::write(&path, b"key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let (_stop, shutdown) = crate::shutdown();
        let target = FixedByChmod {
            path: path.clone(),
            calls: calls.clone(),
        };
        let options = ReloadOptions {
            poll: Duration::from_millis(20),
            on_sighup: false,
            counters: ReloadCounters::default(),
            retry_failed: Duration::from_millis(100),
        };
        let handle = spawn(target, options, shutdown);
        handle.reload();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let failing = calls.load(Ordering::SeqCst);
        assert!(failing >= 2, "retried while failing: {failing}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let after = calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            after,
            "no more reloads once it succeeded"
        );
    }

    /// The file as the failed reload left it is not taken as seen: the next poll reloads it.
    #[tokio::test]
    async fn a_file_finished_during_a_failed_reload_is_reloaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl.pem");
        std::fs::write(&path, b"-----BEGIN X509").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let (_stop, shutdown) = crate::shutdown();
        let target = WrittenDuringTheRead {
            path,
            calls: calls.clone(),
        };
        let options = ReloadOptions {
            poll: Duration::from_millis(20),
            on_sighup: false,
            counters: ReloadCounters::default(),
            retry_failed: Duration::from_secs(3600),
        };
        // The loop ends when every handle is gone: this one lives to the end of the test.
        let handle = spawn(target, options, shutdown);
        handle.reload();
        for _ in 0..100 {
            if calls.load(Ordering::SeqCst) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Ten more polls: nothing changed since.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "reloaded once more, then quiet"
        );
    }
}
