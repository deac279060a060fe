//! File hygiene for secrets and outputs.
//!
//! Writes go to a temporary file in the destination directory, are flushed to disk and then
//! renamed over the destination, so a reader never sees a half-written file and a crash leaves
//! either the old file or the new one. Private keys are created with mode 0600 from the start
//! (never chmod-ed after the fact) and are refused on load when group or others can read them.
//! A file that replaces another keeps its owner and group: a renewal daemon running as root
//! must not take a service's key away from the service. A replaced destination that is a
//! symbolic link is written where it points and the link stays (as `cp` and `openssl -out`
//! do; a deployment linking the file elsewhere keeps seeing the new one), but only a link
//! owned by the writer or by root: one planted by another user is refused, never followed.
//! The write itself happens relative to the destination's directory, opened without following
//! links, so a directory swapped for a link after that decision cannot redirect it.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs as rfs;

use zeroize::Zeroizing;

use crate::{Error, Result};

/// Who may read a file written by [`write_atomic`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Mode 0600: private keys, PKCS#12 bundles, databases.
    Secret,
    /// Mode 0644: certificates, CRLs, CSRs.
    Public,
}

impl Visibility {
    fn mode(self) -> u32 {
        match self {
            Visibility::Secret => 0o600,
            Visibility::Public => 0o644,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Fails with [`Error::AlreadyExists`] when `path` exists and `force` is false.
///
/// Call this for every output before doing any work, so that a refused run changes nothing.
pub fn check_writable(path: &Path, force: bool) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(_) if !force => Err(Error::AlreadyExists {
            path: path.to_path_buf(),
        }),
        Ok(m) if m.file_type().is_symlink() => check_writable(&link_target(path, &m)?, force),
        // Nothing can be renamed over a directory: found now, before any output of a set is
        // put in place, not when this one is.
        Ok(m) if m.is_dir() => Err(io_err(path)(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory",
        ))),
        _ => Ok(()),
    }
}

/// The file a write to `path` replaces: `path`, or where it points when it is a symbolic link
/// that may be followed (see the module; another user's link or a dangling one is an error).
pub fn write_target(path: &Path) -> Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => link_target(path, &m),
        // Not a link itself: its directories are walked all the same (a directory swapped for
        // another user's link since the path was last resolved is refused).
        _ => resolve_trusted(path, path, false),
    }
}

/// This process's effective user: the owner of `/proc/self`.
fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").map(|m| m.uid()).ok()
}

/// Where a replaced symbolic link `path` (`meta`: its own metadata) points, when it may be
/// followed: the link, and every link on the way to what it names (further links, linked
/// directories), owned by this process's user or by root. A link another user planted, in a
/// directory both can write, would make the writer replace whatever it names.
fn link_target(path: &Path, meta: &fs::Metadata) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let me = effective_uid();
    if meta.uid() != 0 && Some(meta.uid()) != me {
        return Err(io_err(path)(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "a symbolic link owned by uid {}, not followed: write to what it names, or \
                 remove it",
                meta.uid()
            ),
        )));
    }
    resolve_trusted(path, path, true)
}

/// `current` (reached from `path`) with every symbolic link on the way resolved, one hop at a
/// time from the root down, each owned by this process's user or by root; with `must_exist`
/// the end must exist (a link that does not resolve is refused).
fn resolve_trusted(path: &Path, current: &Path, must_exist: bool) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let refused = |detail: String| {
        io_err(path)(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            detail,
        ))
    };
    let me = effective_uid();
    let trusted = |uid: u32| uid == 0 || Some(uid) == me;
    let mut current = current.to_path_buf();
    for _ in 0..40 {
        // The shallowest link first: looking at a deeper path makes the OS follow the links
        // above it unseen.
        let ancestors: Vec<&Path> = current.ancestors().collect();
        let link = ancestors
            .into_iter()
            .rev()
            .find(|a| fs::symlink_metadata(a).is_ok_and(|m| m.file_type().is_symlink()))
            .map(Path::to_path_buf);
        let Some(link) = link else {
            return match fs::symlink_metadata(&current) {
                Err(e) if must_exist => Err(refused(format!(
                    "a symbolic link that does not resolve ({e}): write to what it should \
                     name, or remove it"
                ))),
                _ => Ok(current),
            };
        };
        let owner = fs::symlink_metadata(&link).map_err(io_err(&link))?.uid();
        if !trusted(owner) {
            return Err(refused(format!(
                "it resolves through {}, a symbolic link owned by uid {owner}: not followed",
                link.display()
            )));
        }
        let mut next = link
            .parent()
            .unwrap_or(Path::new("/"))
            .join(fs::read_link(&link).map_err(io_err(&link))?);
        // (Joining an empty rest would add a trailing `/`, which makes the OS follow the link
        // the next look must see.)
        if let Ok(rest) = current.strip_prefix(&link) {
            if !rest.as_os_str().is_empty() {
                next.push(rest);
            }
        }
        current = next;
    }
    Err(refused("too many levels of symbolic links".into()))
}

/// An exclusive advisory lock (flock) on a directory, held until dropped. A command that
/// checks its outputs, records what it issued and then writes them holds it from the check
/// to the write: two runs writing the same names one after the other find each other's
/// files, rather than both passing the check and one failing after it recorded.
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] Option<OwnedFd>);

/// Takes [`DirLock`] on `dir` (created if missing), waiting for another holder. A directory
/// the writer may not read (only search, mode 0711) cannot be locked: then no lock is taken.
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let fd = match rfs::open(
        dir,
        rfs::OFlags::RDONLY | rfs::OFlags::DIRECTORY | rfs::OFlags::CLOEXEC,
        rfs::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::ACCESS) => return Ok(DirLock(None)),
        Err(e) => return Err(io_err(dir)(e.into())),
    };
    rfs::flock(&fd, rfs::FlockOperation::LockExclusive).map_err(|e| io_err(dir)(e.into()))?;
    Ok(DirLock(Some(fd)))
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    visibility: Visibility,
    force: bool,
) -> Result<()> {
    stage(path, contents, visibility, force)?.install()
}

/// A file written and flushed next to its destination, not yet in place: [`Staged::install`]
/// puts it there; dropped, it is removed. Outputs that belong together (a key and its
/// certificate) are all staged before any is installed, so a failure while writing them
/// (a full disk, an owner that cannot be kept) leaves every old file as it was.
///
/// Everything after the path is resolved happens relative to the destination's directory,
/// opened once without following any link (walked from the root component by component): a
/// directory swapped for a link meanwhile cannot send the file elsewhere.
#[must_use = "a staged file is removed unless installed"]
pub struct Staged {
    dir: OwnedFd,
    tmp: OsString,
    name: OsString,
    /// The destination, for messages.
    path: PathBuf,
    force: bool,
    installed: bool,
}

/// Writes `contents` to a temporary file beside `path` (mode, owner of a replaced file and
/// fsync as [`write_atomic`]) and returns it staged.
pub fn stage(path: &Path, contents: &[u8], visibility: Visibility, force: bool) -> Result<Staged> {
    check_writable(path, force)?;
    let resolved = write_target(path)?;
    let path = resolved.as_path();
    let dir_path = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io_err(path)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "names no file",
        ))
    })?;
    let dir = open_dir_nofollow(dir_path)?;
    let mut random = [0u8; 8];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| Error::Crypto("random"))?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp-{}", hex::encode(random)));
    let replaced_owner = if force {
        replaced_owner(&dir, name, path, visibility)?
    } else {
        None
    };
    let fd = rfs::openat(
        &dir,
        tmp.as_os_str(),
        rfs::OFlags::WRONLY
            | rfs::OFlags::CREATE
            | rfs::OFlags::EXCL
            | rfs::OFlags::NOFOLLOW
            | rfs::OFlags::CLOEXEC,
        rfs::Mode::from_raw_mode(visibility.mode()),
    )
    .map_err(|e| io_err(path)(e.into()))?;
    let mut file = fs::File::from(fd);
    // From here on the temporary file is removed on any failure (the guard's drop).
    let staged = Staged {
        dir,
        tmp,
        name: name.to_os_string(),
        path: path.to_path_buf(),
        force,
        installed: false,
    };
    // The umask may have removed bits; make the mode exactly what was asked for.
    file.set_permissions(fs::Permissions::from_mode(visibility.mode()))
        .map_err(io_err(path))?;
    if let Some((uid, gid)) = replaced_owner {
        keep_owner(&file, path, uid, gid)?;
    }
    file.write_all(contents).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    Ok(staged)
}

/// `dir` opened one component at a time from the root (or the working directory) without
/// following a symbolic link. The path comes from [`write_target`], which resolved every link
/// it may follow: a link met now was swapped in since, by someone who could, and following it
/// would put the file (a key) wherever it points. Missing directories are created, as
/// `create_dir_all` does.
fn open_dir_nofollow(dir: &Path) -> Result<OwnedFd> {
    use std::path::Component;
    // O_PATH: a directory the writer may only search (mode 0711), not read, is walked as a
    // path-based write walks it.
    let flags =
        rfs::OFlags::PATH | rfs::OFlags::DIRECTORY | rfs::OFlags::NOFOLLOW | rfs::OFlags::CLOEXEC;
    let failed = |e: rustix::io::Errno| io_err(dir)(e.into());
    let start = if dir.is_absolute() { "/" } else { "." };
    let mut fd = rfs::openat(rfs::CWD, start, flags, rfs::Mode::empty()).map_err(failed)?;
    for component in dir.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::ParentDir => OsStr::new(".."),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
        };
        let next = match rfs::openat(&fd, name, flags, rfs::Mode::empty()) {
            Err(rustix::io::Errno::NOENT) if matches!(component, Component::Normal(_)) => {
                match rfs::mkdirat(&fd, name, rfs::Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(failed(e)),
                }
                rfs::openat(&fd, name, flags, rfs::Mode::empty())
            }
            other => other,
        };
        fd = match next {
            Ok(next) => next,
            // (Linux says ENOTDIR for a link opened with O_DIRECTORY | O_NOFOLLOW.)
            Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP)
                if rfs::statat(&fd, name, rfs::AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|m| {
                    rfs::FileType::from_raw_mode(m.st_mode) == rfs::FileType::Symlink
                }) =>
            {
                return Err(io_err(dir)(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{} became a symbolic link while the file was being written: not \
                         followed, nothing written",
                        Path::new(name).display()
                    ),
                )));
            }
            Err(e) => return Err(failed(e)),
        };
    }
    Ok(fd)
}

impl Staged {
    /// Puts the file in place: renamed over the destination when replacing was asked for,
    /// else linked (failing if the destination appeared meanwhile).
    pub fn install(mut self) -> Result<()> {
        let path = self.path.clone();
        if self.force {
            rfs::renameat(&self.dir, &self.tmp, &self.dir, &self.name)
                .map_err(|e| io_err(&path)(e.into()))?;
        } else {
            // A hard link fails if the destination exists: no-clobber without a race between
            // the existence check and the rename.
            rfs::linkat(
                &self.dir,
                &self.tmp,
                &self.dir,
                &self.name,
                rfs::AtFlags::empty(),
            )
            .map_err(|e| {
                if e == rustix::io::Errno::EXIST {
                    Error::AlreadyExists { path: path.clone() }
                } else {
                    io_err(&path)(e.into())
                }
            })?;
            rfs::unlinkat(&self.dir, &self.tmp, rfs::AtFlags::empty())
                .map_err(|e| io_err(&path)(e.into()))?;
        }
        self.installed = true;
        // (A path handle cannot be synced: the directory itself, if it may be read.)
        if let Ok(d) = rfs::openat(
            &self.dir,
            ".",
            rfs::OFlags::RDONLY | rfs::OFlags::DIRECTORY | rfs::OFlags::CLOEXEC,
            rfs::Mode::empty(),
        ) {
            let _ = rfs::fsync(&d);
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.installed {
            let _ = rfs::unlinkat(&self.dir, &self.tmp, rfs::AtFlags::empty());
        }
    }
}

/// The owner the replacement of `name` in `dir` (`path`, for messages) keeps. A secret is not
/// handed to another user than the writer when that user could have put the file there for the
/// writer to replace (a directory others may write, not theirs): a planted file would receive
/// the key.
fn replaced_owner(
    dir: &OwnedFd,
    name: &OsStr,
    path: &Path,
    visibility: Visibility,
) -> Result<Option<(u32, u32)>> {
    let Ok(m) = rfs::statat(dir, name, rfs::AtFlags::SYMLINK_NOFOLLOW) else {
        return Ok(None);
    };
    if rfs::FileType::from_raw_mode(m.st_mode) != rfs::FileType::RegularFile {
        return Ok(None);
    }
    let owner = (m.st_uid, m.st_gid);
    if visibility == Visibility::Secret && Some(owner.0) != effective_uid() {
        let d = rfs::fstat(dir).map_err(|e| io_err(path)(e.into()))?;
        if d.st_mode & 0o022 != 0 && d.st_uid != owner.0 {
            return Err(io_err(path)(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "belongs to uid {} in a directory others may write: a planted file would \
                     receive the new secret; remove it first or write it elsewhere",
                    owner.0
                ),
            )));
        }
    }
    Ok(Some(owner))
}

/// Gives `file` (the replacement of `path`) the owner `uid:gid` of the file it replaces, before
/// anything is written to it. Fails rather than install a file its readers may not open.
/// The group is kept when it can be: the modes written here never give the group more than
/// others (0600, 0644), so a group the writer may not set (a user replacing its own file
/// whose group it is not in) is no reason to fail.
fn keep_owner(file: &fs::File, path: &Path, uid: u32, gid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().map_err(io_err(path))?;
    if (meta.uid(), meta.gid()) == (uid, gid) {
        return Ok(());
    }
    if meta.uid() == uid {
        let _ = std::os::unix::fs::fchown(file, None, Some(gid));
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(uid), Some(gid)).map_err(|source| Error::KeepOwner {
        path: path.to_path_buf(),
        uid,
        gid,
        source,
    })
}

/// Reads a file that may hold a private key, refusing it when group or others can read it.
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    // The mode of the file opened, not of whatever the path names a moment before.
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    read_to_end_wiped(
        &mut file,
        usize::try_from(meta.len()).unwrap_or(0),
        MAX_SECRET_BYTES,
    )
    .map_err(io_err(path))
}

/// Largest file read as a secret (a key, a key with its chain, a passphrase, a PKCS#12).
pub const MAX_SECRET_BYTES: usize = 16 << 20;
/// Largest input file read otherwise (a CRL of some ten million entries): past it the read
/// stops with an error rather than filling memory (`/dev/zero`, a log given by mistake).
pub const MAX_INPUT_BYTES: usize = 512 << 20;

/// Reads an input file that may hold a private key but is not required to be private (what
/// `mtls inspect` and `mtls verify` are given): wiped when dropped, at most
/// [`MAX_INPUT_BYTES`].
pub fn read_input(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    read_to_end_wiped(
        &mut file,
        usize::try_from(size).unwrap_or(0),
        MAX_INPUT_BYTES,
    )
    .map_err(io_err(path))
}

/// Reads `reader` to its end into a buffer that is wiped when dropped and never leaves an
/// unwiped copy behind: `Read::read_to_end` grows its vector by reallocating, which frees the
/// old allocation (holding what was read so far) without wiping it — as happens when the file
/// is larger than its size said (it grew, or it is a pipe or `/proc` file of size 0) or larger
/// than the 1 MiB first allocation. Here a larger buffer is allocated, the bytes copied and the
/// old buffer wiped. `size_hint` (the file's size) sizes the first allocation, up to 1 MiB.
/// More than `limit` bytes is an error.
fn read_to_end_wiped(
    reader: &mut impl Read,
    size_hint: usize,
    limit: usize,
) -> std::io::Result<Zeroizing<Vec<u8>>> {
    // One byte more than the expected size, so that reading the end needs no reallocation.
    let mut out = Zeroizing::new(Vec::with_capacity((size_hint.min(1 << 20) + 1).max(256)));
    loop {
        if out.len() > limit {
            return Err(too_large(limit));
        }
        if out.len() == out.capacity() {
            let mut larger = Zeroizing::new(Vec::with_capacity(out.capacity() * 2));
            larger.extend_from_slice(&out);
            out = larger; // the old buffer is wiped as it is dropped
        }
        let (len, capacity) = (out.len(), out.capacity());
        // Within the capacity: no reallocation.
        out.resize(capacity, 0);
        match reader.read(&mut out[len..]) {
            Ok(0) => {
                out.truncate(len);
                return Ok(out);
            }
            Ok(n) => out.truncate(len + n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => out.truncate(len),
            Err(e) => return Err(e),
        }
    }
}

/// Reads a passphrase file: the one rule every command and config of mtls follows. The file is
/// a secret like a key (refused when group- or world-readable), and one trailing line ending
/// (`\n` or `\r\n`, as editors and `echo` add) is not part of the passphrase; anything else,
/// including other trailing whitespace, is.
pub fn read_passphrase_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let mut v = read_secret(path)?;
    if v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
    Ok(v)
}

/// Reads a public file (certificate, CSR, CRL), at most [`MAX_INPUT_BYTES`].
pub fn read_public(path: &Path) -> Result<Vec<u8>> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    file.take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(io_err(path))?;
    if out.len() > MAX_INPUT_BYTES {
        return Err(io_err(path)(too_large(MAX_INPUT_BYTES)));
    }
    Ok(out)
}

fn too_large(limit: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "larger than {} MiB: not a certificate, key, CSR or CRL file",
            limit >> 20
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endless input (`/dev/zero`) stops with an error at the limit instead of filling
    /// memory; one within it is read whole.
    #[test]
    fn reads_stop_at_their_limit() {
        let e = read_to_end_wiped(&mut std::io::repeat(0), 0, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
        let data = vec![7u8; 3 << 20];
        assert_eq!(
            read_to_end_wiped(&mut data.as_slice(), 0, 4 << 20)
                .unwrap()
                .len(),
            3 << 20
        );
    }

    #[test]
    fn passphrase_files_lose_one_line_ending_and_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        for (content, expected) in [
            (&b"secret\n"[..], &b"secret"[..]),
            (b"secret\r\n", b"secret"),
            (b"secret", b"secret"),
            (b"secret\n\n", b"secret\n"),
            (b"secret \n", b"secret "),
        ] {
            fs::write(&p, content).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(&read_passphrase_file(&p).unwrap()[..], expected);
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_passphrase_file(&p),
            Err(Error::InsecurePermissions { .. })
        ));
    }

    #[test]
    fn secret_written_0600_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_atomic(&p, b"secret", Visibility::Secret, false).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = write_atomic(&p, b"other", Visibility::Secret, false).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }));
        assert_eq!(fs::read(&p).unwrap(), b"secret");
        write_atomic(&p, b"other", Visibility::Secret, true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"other");
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn world_readable_key_refused_with_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        fs::write(&p, b"x").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret(&p).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(&*read_secret(&p).unwrap(), b"x");
    }

    /// A secret larger than its file said (it grew, or a pipe of size 0) or than the first
    /// allocation is read whole, the buffer grown by copying into a larger one, whatever the
    /// reads return (short reads, interruptions).
    #[test]
    fn secrets_larger_than_announced_are_read_whole() {
        struct Trickle<'a> {
            data: &'a [u8],
            interrupt: bool,
        }
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.interrupt = !self.interrupt;
                if self.interrupt {
                    return Err(std::io::ErrorKind::Interrupted.into());
                }
                let n = buf.len().min(self.data.len()).min(777);
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                Ok(n)
            }
        }
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        for hint in [0, 10, 255, 256, 4999, 5000, 5001, usize::MAX] {
            let mut reader = Trickle {
                data: &data,
                interrupt: false,
            };
            let read: Zeroizing<Vec<u8>> =
                read_to_end_wiped(&mut reader, hint, usize::MAX).unwrap();
            assert_eq!(&read[..], &data[..], "size hint {hint}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.key");
        let big: Vec<u8> = (0..(3 << 19) + 5).map(|i: u32| (i % 253) as u8).collect();
        write_atomic(&p, &big, Visibility::Secret, false).unwrap();
        assert_eq!(&read_secret(&p).unwrap()[..], &big[..]);
    }

    /// A replaced file keeps its owner and group (a root renewal daemon rewriting a service's
    /// key); a new file gets the writer's. Needs root to own files as another user: as anyone
    /// else the test checks only that the writer's own files stay theirs.
    #[test]
    fn replacement_keeps_the_owner_of_the_replaced_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("service.key");
        write_atomic(&p, b"old", Visibility::Secret, false).unwrap();
        let me = fs::metadata(&p).unwrap();
        let owner = if me.uid() == 0 {
            (65534, 65534)
        } else {
            (me.uid(), me.gid())
        };
        std::os::unix::fs::chown(&p, Some(owner.0), Some(owner.1)).unwrap();
        write_atomic(&p, b"new", Visibility::Secret, true).unwrap();
        let after = fs::metadata(&p).unwrap();
        assert_eq!((after.uid(), after.gid()), owner);
        assert_eq!(after.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"new");
        let fresh = dir.path().join("fresh.pem");
        write_atomic(&fresh, b"x", Visibility::Public, true).unwrap();
        assert_eq!(fs::metadata(&fresh).unwrap().uid(), me.uid());
    }

    /// Replacing a symbolic link writes where it points and keeps the link (a deployment that
    /// links the CRL elsewhere sees the new one); a dangling link, or one another user owns,
    /// is refused and left as it was; without `force` a link is an existing file.
    #[test]
    fn a_replaced_symbolic_link_is_written_through_only_when_it_may_be_followed() {
        use std::os::unix::fs::{symlink, MetadataExt};
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        let target = shared.join("crl.pem");
        write_atomic(&target, b"old", Visibility::Public, false).unwrap();
        let link = dir.path().join("crl.pem");
        symlink(&target, &link).unwrap();
        assert!(matches!(
            write_atomic(&link, b"new", Visibility::Public, false),
            Err(Error::AlreadyExists { .. })
        ));
        write_atomic(&link, b"new", Visibility::Public, true).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_link(&link).unwrap(), target);
        assert_eq!(fs::read(&target).unwrap(), b"new");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");

        let dangling = dir.path().join("gone.pem");
        symlink(shared.join("missing.pem"), &dangling).unwrap();
        let e = write_atomic(&dangling, b"x", Visibility::Public, true).unwrap_err();
        assert!(e.to_string().contains("does not resolve"), "{e}");
        assert!(fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!shared.join("missing.pem").exists());

        // Another user's link: only root can make one here.
        if fs::metadata("/proc/self").unwrap().uid() == 0 {
            let planted = dir.path().join("planted.key");
            symlink(&target, &planted).unwrap();
            std::os::unix::fs::lchown(&planted, Some(65534), Some(65534)).unwrap();
            let e = write_atomic(&planted, b"key", Visibility::Secret, true).unwrap_err();
            assert!(
                e.to_string().contains("owned by uid 65534, not followed"),
                "{e}"
            );
            assert!(check_writable(&planted, true).is_err());
            assert_eq!(fs::read(&target).unwrap(), b"new");
            assert!(fs::symlink_metadata(&planted)
                .unwrap()
                .file_type()
                .is_symlink());
            // Our link to a file another user replaced with a link of theirs, and our link
            // through a directory another user linked: refused, what they name untouched.
            let victim = dir.path().join("victim");
            fs::write(&victim, b"precious").unwrap();
            let theirs = shared.join("app.crt");
            symlink(&victim, &theirs).unwrap();
            std::os::unix::fs::lchown(&theirs, Some(65534), Some(65534)).unwrap();
            let ours = dir.path().join("app.crt");
            symlink(&theirs, &ours).unwrap();
            let e = write_atomic(&ours, b"cert", Visibility::Public, true).unwrap_err();
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
            let linked_dir = dir.path().join("linked");
            symlink(dir.path(), &linked_dir).unwrap();
            std::os::unix::fs::lchown(&linked_dir, Some(65534), Some(65534)).unwrap();
            let through = dir.path().join("through.pem");
            symlink(linked_dir.join("victim"), &through).unwrap();
            let e = write_atomic(&through, b"cert", Visibility::Public, true).unwrap_err();
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
            assert_eq!(fs::read(&victim).unwrap(), b"precious");
            // Our own link to the victim, reached through their linked directory: the walk
            // looks at the shallowest link first, so theirs is seen.
            let own_link = dir.path().join("own-link");
            symlink(&victim, &own_link).unwrap();
            let via = dir.path().join("via.pem");
            symlink(linked_dir.join("own-link"), &via).unwrap();
            let e = write_atomic(&via, b"cert", Visibility::Public, true).unwrap_err();
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
            // A key file another user planted in a directory others may write does not get
            // the new secret.
            let open_dir = dir.path().join("open");
            fs::create_dir(&open_dir).unwrap();
            fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o777)).unwrap();
            let planted_key = open_dir.join("app.key");
            fs::write(&planted_key, b"theirs").unwrap();
            std::os::unix::fs::chown(&planted_key, Some(65534), Some(65534)).unwrap();
            let e = write_atomic(&planted_key, b"key", Visibility::Secret, true).unwrap_err();
            assert!(e.to_string().contains("planted file"), "{e}");
            assert_eq!(fs::read(&planted_key).unwrap(), b"theirs");
        }
    }

    /// Outputs that belong together: when one cannot be written, the others staged before it
    /// are removed and every old file stays as it was; installed, each replaces its old file.
    #[test]
    fn a_directory_swapped_for_a_link_after_resolution_is_not_followed() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        fs::create_dir(&keys).unwrap();
        let resolved = write_target(&keys.join("client.key")).unwrap();
        // Between the walk and the write, `keys` becomes a link to somewhere else (here even
        // one this user owns: the walk decided, the write only goes where it decided).
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::rename(&keys, dir.path().join("keys.old")).unwrap();
        symlink(&elsewhere, &keys).unwrap();
        let e = open_dir_nofollow(resolved.parent().unwrap())
            .expect_err("a link on the way is refused");
        assert!(e.to_string().contains("became a symbolic link"), "{e}");
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);

        // A directory the writer may only search, not read, is walked (as root, the modes do
        // not stop anyone: the case is the writer's own directory at 0711).
        let search_only = dir.path().join("search-only");
        fs::create_dir(&search_only).unwrap();
        fs::set_permissions(&search_only, fs::Permissions::from_mode(0o311)).unwrap();
        write_atomic(&search_only.join("k.pem"), b"k", Visibility::Secret, false).unwrap();
        fs::set_permissions(&search_only, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(fs::read(search_only.join("k.pem")).unwrap(), b"k");

        // Directories that do not exist yet are made, relative paths work.
        let deep = dir.path().join("a/b/c");
        open_dir_nofollow(&deep).unwrap();
        assert!(deep.is_dir());
        write_atomic(&deep.join("x.pem"), b"x", Visibility::Public, false).unwrap();
        assert_eq!(fs::read(deep.join("x.pem")).unwrap(), b"x");
    }

    #[test]
    fn staged_files_are_installed_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("app.key");
        let cert = dir.path().join("app.crt");
        write_atomic(&key, b"old key", Visibility::Secret, false).unwrap();
        write_atomic(&cert, b"old cert", Visibility::Public, false).unwrap();
        // The second output cannot be written (its directory is a file).
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, b"x").unwrap();
        let failed = (|| {
            let a = stage(&key, b"new key", Visibility::Secret, true)?;
            let b = stage(
                &blocker.join("app.crt"),
                b"new cert",
                Visibility::Public,
                true,
            )?;
            a.install()?;
            b.install()
        })();
        assert!(failed.is_err());
        assert_eq!(fs::read(&key).unwrap(), b"old key");
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains(".tmp-")),
            "no temporary file is left: {names:?}"
        );
        let staged = [
            stage(&key, b"new key", Visibility::Secret, true).unwrap(),
            stage(&cert, b"new cert", Visibility::Public, true).unwrap(),
        ];
        for s in staged {
            s.install().unwrap();
        }
        assert_eq!(fs::read(&key).unwrap(), b"new key");
        assert_eq!(fs::read(&cert).unwrap(), b"new cert");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    const CHILD: &str = "MTLS_TEST_KEEP_OWNER_CHILD";

    /// A user who cannot give the replacement the old file's owner changes nothing: root's
    /// file in a directory anyone may write to, replaced by `nobody` (this test binary run
    /// again under `setpriv`, see [`keep_owner_child`]).
    #[test]
    fn replacement_refused_when_the_owner_cannot_be_kept() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let p = dir.path().join("service.pem");
        write_atomic(&p, b"old", Visibility::Public, false).unwrap();
        if fs::metadata(&p).unwrap().uid() != 0 {
            eprintln!("not root: cannot run a writer that does not own the file");
            return;
        }
        let status = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "files::tests::keep_owner_child", "--nocapture"])
            .env(CHILD, &p)
            .status()
            .unwrap();
        assert!(status.success(), "the child saw the refusal");
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::metadata(&p).unwrap().uid(), 0);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        // Its own file, in a group it is not in: replaced, its owner kept, the group its own
        // (the modes written give the group nothing more than others).
        std::os::unix::fs::chown(&p, Some(65534), Some(0)).unwrap();
        let status = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "files::tests::keep_owner_child", "--nocapture"])
            .env(CHILD, &p)
            .env(CHILD_OWN, "1")
            .status()
            .unwrap();
        assert!(status.success(), "the child replaced its own file");
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::metadata(&p).unwrap().uid(), 65534);
    }

    const CHILD_OWN: &str = "MTLS_TEST_KEEP_OWNER_CHILD_OWN";

    /// The other user of [`replacement_refused_when_the_owner_cannot_be_kept`]; does nothing
    /// when run on its own.
    #[test]
    fn keep_owner_child() {
        let Some(p) = std::env::var_os(CHILD) else {
            return;
        };
        let written = write_atomic(Path::new(&p), b"new", Visibility::Public, true);
        if std::env::var_os(CHILD_OWN).is_some() {
            written.unwrap();
            return;
        }
        let err = written.unwrap_err();
        assert!(matches!(err, Error::KeepOwner { .. }), "{err}");
        assert!(err.to_string().contains("owner 0:0"), "{err}");
    }
}
