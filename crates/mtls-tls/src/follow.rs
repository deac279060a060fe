//! How a client follows files: a value loaded from a set of files is loaded again when they
//! change, noticed by a look at their [`FileStamps`] (one `stat` each) when a connection starts.
//! A change is loaded and validated before it is used; one that does not load leaves the last
//! good value in use and is tried again every [`RETRY_FAILED_LOAD`] until it loads, since the fix
//! (a `chmod`, a clock reaching a certificate's start) may change no file.
//!
//! The one mechanism behind [`crate::ReloadingIdentity`] (a client certificate and key) and
//! `mtls_client`'s CRL files of the server's revocation status. Servers poll the same stamps
//! from `mtls_serve::reload`.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::files::FileStamps;

/// How long changed files that did not load wait before they are tried again unchanged.
pub const RETRY_FAILED_LOAD: Duration = Duration::from_secs(5);

/// A value loaded from `paths`, loaded again when they change (see the module).
pub struct FollowedFiles<T> {
    paths: Vec<PathBuf>,
    state: Mutex<State<T>>,
}

struct State<T> {
    /// The files as they were just before the last load was tried.
    stamps: FileStamps,
    value: T,
    /// When the files as they are now last failed to load: they are tried again after
    /// [`RETRY_FAILED_LOAD`] even if they do not change.
    failed_at: Option<Instant>,
}

/// What [`FollowedFiles::refresh`] did.
#[derive(Debug)]
pub enum Refreshed<E> {
    /// The files did not change (or failed to load and are not due for another try): the
    /// value in use stays.
    Unchanged,
    /// The files changed and loaded: the new value is in use.
    Loaded,
    /// The files do not load: the last good value stays in use.
    Failed {
        /// Why they do not load.
        error: E,
        /// The files changed since the last look (log it); `false` for a periodic retry of
        /// files that already failed.
        changed: bool,
    },
}

impl<T> std::fmt::Debug for FollowedFiles<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowedFiles")
            .field("paths", &self.paths)
            .finish()
    }
}

impl<T: Clone> FollowedFiles<T> {
    /// Loads the value now (the files are stamped just before); an error here is the caller's
    /// to report (nothing to fall back on yet).
    pub fn new<E>(paths: Vec<PathBuf>, load: impl FnOnce() -> Result<T, E>) -> Result<Self, E> {
        let stamps = FileStamps::of(&paths);
        let value = load()?;
        Ok(FollowedFiles {
            paths,
            state: Mutex::new(State {
                stamps,
                value,
                failed_at: None,
            }),
        })
    }

    /// The followed files.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The files' stamps taken just before the value in use (or the last failed try) was read.
    pub fn stamps(&self) -> FileStamps {
        self.lock().stamps.clone()
    }

    /// The value in use, without looking at the files.
    pub fn in_use(&self) -> T {
        self.lock().value.clone()
    }

    /// The value in use after a look at the files: if they changed since the last look (or
    /// failed to load and are due for another try), `load` is given the value in use and its
    /// result replaces it; on error the value in use stays. Loads run one at a time.
    pub fn refresh<E>(&self, load: impl FnOnce(&T) -> Result<T, E>) -> (T, Refreshed<E>) {
        let mut state = self.lock();
        let stamps = FileStamps::of(&self.paths);
        let changed = stamps != state.stamps;
        let retry = state
            .failed_at
            .is_some_and(|at| at.elapsed() >= RETRY_FAILED_LOAD);
        if !changed && !retry {
            return (state.value.clone(), Refreshed::Unchanged);
        }
        let outcome = Self::load_into(&mut state, stamps, load);
        let outcome = match outcome {
            Ok(()) => Refreshed::Loaded,
            Err(error) => Refreshed::Failed { error, changed },
        };
        (state.value.clone(), outcome)
    }

    /// Loads the files now, changed or not (an explicit reload); on error the value in use
    /// stays.
    pub fn reload<E>(&self, load: impl FnOnce(&T) -> Result<T, E>) -> Result<T, E> {
        let mut state = self.lock();
        let stamps = FileStamps::of(&self.paths);
        Self::load_into(&mut state, stamps, load)?;
        Ok(state.value.clone())
    }

    /// Tries `load` on files stamped `stamps` (taken before they are read: a file still being
    /// written changes again after them, and is read again at the next look).
    fn load_into<E>(
        state: &mut State<T>,
        stamps: FileStamps,
        load: impl FnOnce(&T) -> Result<T, E>,
    ) -> Result<(), E> {
        state.stamps = stamps;
        match load(&state.value) {
            Ok(value) => {
                state.value = value;
                state.failed_at = None;
                Ok(())
            }
            Err(e) => {
                state.failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A poisoned lock only means a load panicked: the value it guards was not replaced.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load(path: &std::path::Path) -> Result<String, String> {
        let s = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        if s.starts_with("good") {
            Ok(s)
        } else {
            Err(format!("bad content {s:?}"))
        }
    }

    #[test]
    fn a_changed_file_is_loaded_and_a_bad_one_keeps_the_last_good_value() {
        // No tempfile here (not a dependency of this crate): a directory of our own.
        let dir = std::env::temp_dir().join(format!("mtls-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, "good 1").unwrap();
        let f = FollowedFiles::new(vec![path.clone()], || load(&path)).unwrap();
        let (v, r) = f.refresh(|_| load(&path));
        assert_eq!(v, "good 1");
        assert!(matches!(r, Refreshed::Unchanged));

        std::fs::write(&path, "good 2, longer").unwrap();
        let (v, r) = f.refresh(|old| {
            assert_eq!(old, "good 1");
            load(&path)
        });
        assert_eq!(v, "good 2, longer");
        assert!(matches!(r, Refreshed::Loaded));

        std::fs::write(&path, "garbage, and longer still").unwrap();
        let (v, r) = f.refresh(|_| load(&path));
        assert_eq!(v, "good 2, longer");
        assert!(matches!(r, Refreshed::Failed { changed: true, .. }));
        // Not tried again before RETRY_FAILED_LOAD.
        let (v, r) = f.refresh(|_| -> Result<String, String> { panic!("loaded again") });
        assert_eq!(v, "good 2, longer");
        assert!(matches!(r, Refreshed::Unchanged));
        // An explicit reload loads whatever is there.
        assert!(f.reload(|_| load(&path)).is_err());
        assert_eq!(f.in_use(), "good 2, longer");
        std::fs::write(&path, "good 3 after the garbage").unwrap();
        assert_eq!(
            f.reload(|_| load(&path)).unwrap(),
            "good 3 after the garbage"
        );
        assert_eq!(f.in_use(), "good 3 after the garbage");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
