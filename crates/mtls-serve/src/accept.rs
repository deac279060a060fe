//! Accepting connections: one accept loop (backoff on errors, a connection limit, a task per
//! connection), TLS handshakes under a deadline, and the shutdown signal that drains them.
//!
//! Every server mtls ships accepts through [`accept_loop`]: the gateway's listeners and admin
//! page, the online CA's two listeners, the renewal daemon's metrics page, the demo upstream,
//! `mtls tunnel` and applications on `mtls-axum`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;

use crate::coalesce::Coalesced;
use crate::metrics::Counter;

/// First pause after a failed `accept` (out of descriptors, typically); doubled per failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between failed `accept`s.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// At most `max` connections at once, shared by the listeners given the same `Slots`, and
/// optionally at most so many from one source ([`Slots::per_source`]).
#[derive(Clone, Debug)]
pub struct Slots {
    sem: Arc<Semaphore>,
    max: u32,
    refused: Counter,
    per_source: Option<Arc<PerSource>>,
}

/// Connections open per source: an IPv4 address, or the /64 of an IPv6 address (one host
/// is commonly given a whole /64).
#[derive(Debug)]
struct PerSource {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// The source a connection is counted under.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

impl PerSource {
    fn take(&self, source: IpAddr) -> bool {
        // A poisoned map (a panic while held) is still a valid count.
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(source).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, source: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&source);
            }
        }
    }
}

/// One connection's place under the limits; dropped when the connection (and any tunnel
/// upgraded from it) ends.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    source: Option<(Arc<PerSource>, IpAddr)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((per_source, source)) = self.source.take() {
            per_source.give_back(source);
        }
    }
}

impl Slots {
    /// A limit of `max` connections at once (capped at `u32::MAX`).
    pub fn new(max: usize) -> Self {
        let max = u32::try_from(max)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        Slots {
            sem: Arc::new(Semaphore::new(max as usize)),
            max,
            refused: Counter::default(),
            per_source: None,
        }
    }

    /// At most `max` of the connections from one source at once (an IPv4 address, or an IPv6
    /// /64), so one host cannot take every slot. Off by default: behind a load balancer or a
    /// NAT every client has the same source.
    pub fn per_source(mut self, max: usize) -> Self {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        self.per_source = Some(Arc::new(PerSource {
            max,
            open: Mutex::new(HashMap::new()),
        }));
        self
    }

    /// Counts connections closed at once because every slot (or every slot of their source)
    /// was taken.
    pub fn count_refused(mut self, counter: Counter) -> Self {
        self.refused = counter;
        self
    }

    fn try_take(&self, remote: IpAddr) -> Option<Slot> {
        let permit = self.sem.clone().try_acquire_owned().ok()?;
        let source = match &self.per_source {
            None => None,
            Some(per_source) => {
                let source = source_of(remote);
                if !per_source.take(source) {
                    return None;
                }
                Some((per_source.clone(), source))
            }
        };
        Some(Slot {
            _permit: permit,
            source,
        })
    }

    /// Connections open now.
    pub fn in_use(&self) -> usize {
        (self.max as usize).saturating_sub(self.sem.available_permits())
    }

    /// Waits until every connection has ended, at most `deadline`; true if they all did.
    pub async fn drain(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.sem.acquire_many(self.max))
            .await
            .is_ok()
    }
}

/// Tells accept loops and connections to stop (see [`shutdown`]).
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Resolves when shutdown was asked for. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new shutdown signal.
pub fn shutdown() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Tells every [`Shutdown`] of this trigger to stop.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Another [`Shutdown`] signal of this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves once shutdown is triggered (or its trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown has been triggered; does not wait.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

/// A source of connections; [`TcpListener`] is the real one.
pub trait Incoming: Send + 'static {
    /// The connection type ([`TcpStream`] for a [`TcpListener`]).
    type Io: Send + 'static;
    /// Waits for the next connection and its remote address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;
}

impl Incoming for TcpListener {
    type Io = TcpStream;
    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (tcp, remote) = TcpListener::accept(self).await?;
        // Small requests and answers go out at once.
        let _ = tcp.set_nodelay(true);
        Ok((tcp, remote))
    }
}

/// What [`accept_loop`] is given as the remote address of a Unix-domain connection (it has no
/// IP address): the unspecified address, port 0. Per-source limits count all of them as one
/// source.
pub const UNIX_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// A Unix-domain socket that serves only its owner: for a local endpoint that acts with the
/// process's credentials (`mtls tunnel` presents the user's client certificate), where a
/// loopback TCP port would serve every local user. The socket file is mode 0600, and a
/// connection whose peer (`SO_PEERCRED`) is another user than the file's owner is closed
/// unserved, whatever the file's mode or the directory allow. The file is removed when the
/// listener is dropped, if it is still this listener's.
pub struct OwnerOnlyUnixListener {
    listener: tokio::net::UnixListener,
    path: std::path::PathBuf,
    uid: u32,
    ino: u64,
    /// Another local user can connect as fast as it likes: the log lines are rate-limited.
    refusals: crate::refusals::RefusalLog,
}

impl OwnerOnlyUnixListener {
    /// Binds `path`. A socket file nobody listens on any more (left by a process that died) is
    /// replaced; a socket someone listens on, or any other file at `path`, is refused. Call
    /// inside a tokio runtime.
    pub fn bind(path: &std::path::Path) -> io::Result<Self> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("{}: another process listens on it", path.display()),
                        ))
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        std::fs::remove_file(path)?
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = tokio::net::UnixListener::bind(path)?;
        // Between bind and chmod the file has the umask's mode: the peer check below refuses
        // other users' connections either way.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(OwnerOnlyUnixListener {
            listener,
            path: path.to_path_buf(),
            uid: meta.uid(),
            ino: meta.ino(),
            refusals: crate::refusals::RefusalLog::default(),
        })
    }

    /// The socket file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Incoming for OwnerOnlyUnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&mut self) -> io::Result<(tokio::net::UnixStream, SocketAddr)> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            let cred = stream.peer_cred();
            if matches!(&cred, Ok(c) if c.uid() == self.uid) {
                return Ok((stream, UNIX_PEER));
            }
            let Some(suppressed) = self.refusals.admit() else {
                continue;
            };
            match cred {
                Ok(cred) => tracing::warn!(
                    socket = %self.path.display(),
                    uid = cred.uid(),
                    pid = cred.pid(),
                    suppressed,
                    "refused a connection from another user"
                ),
                Err(e) => tracing::warn!(
                    socket = %self.path.display(),
                    error = %e,
                    suppressed,
                    "refused a connection whose user cannot be told"
                ),
            }
        }
    }
}

impl Drop for OwnerOnlyUnixListener {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        // Only our own file: another process may have replaced a removed one since.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Accepts until `shutdown`, spawning `handler` for each connection that gets a slot. A
/// connection over the limit is closed at once (and counted). When `accept` fails (out of
/// descriptors, typically) the loop pauses, [`BACKOFF_MIN`] doubling up to [`BACKOFF_MAX`],
/// instead of spinning; a connection aborted before it was accepted is not a reason to pause.
pub async fn accept_loop<L, H, F>(
    mut listener: L,
    slots: Slots,
    mut shutdown: Shutdown,
    mut handler: H,
) where
    L: Incoming,
    H: FnMut(L::Io, SocketAddr, Slot) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut backoff: Option<Duration> = None;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait() => return,
        };
        match accepted {
            Ok((io, remote)) => {
                backoff = None;
                match slots.try_take(remote.ip()) {
                    Some(slot) => {
                        tokio::spawn(handler(io, remote, slot));
                    }
                    None => {
                        slots.refused.inc();
                        drop(io);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                let pause = backoff.map_or(BACKOFF_MIN, |d| (d * 2).min(BACKOFF_MAX));
                backoff = Some(pause);
                tracing::warn!(error = %e, retry_in = ?pause, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.wait() => return,
                }
            }
        }
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The handshake did not finish within the deadline.
    #[error("TLS handshake timed out")]
    TimedOut,
    /// The handshake failed: a TLS error (no or an invalid client certificate, an
    /// incompatible client) or an I/O error.
    #[error("TLS handshake failed ({reason}): {error}")]
    Failed {
        /// A label from a fixed set (see [`HandshakeError::reason`]).
        reason: String,
        /// The underlying error.
        error: io::Error,
    },
}

impl HandshakeError {
    /// A label from a fixed set: `timeout`, `no_certificate`, a rustls certificate-error
    /// variant name, `incompatible`, `tls_error` or `io_error`.
    pub fn reason(&self) -> &str {
        match self {
            HandshakeError::TimedOut => "timeout",
            HandshakeError::Failed { reason, .. } => reason,
        }
    }
}

fn failure_reason(e: &io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate".into(),
        // The same reason codes as everywhere else (a fixed set: metric labels).
        Some(rustls::Error::InvalidCertificate(c)) => {
            mtls_verify::code_of_certificate_error(c).into()
        }
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible".into(),
        Some(_) => "tls_error".into(),
        None => "io_error".into(),
    }
}

/// A connection after [`handshake`]: TLS over the accepted stream (TCP by default).
pub type TlsConnection<IO = TcpStream> = TlsStream<Coalesced<IO>>;

/// Runs a server handshake on `io` under `deadline` (call it in the connection's own task:
/// a slow client must never hold up the accept loop).
pub async fn handshake<IO>(
    config: Arc<ServerConfig>,
    io: IO,
    deadline: Duration,
) -> Result<TlsConnection<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let accepting = async {
        match acceptor.accept(Coalesced::new(io)).into_fallible().await {
            Ok(mut tls) => {
                let (io, conn) = tls.get_mut();
                io.established();
                if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
                    // TLS 1.2 ends with the server's `Finished`, which the client waits for.
                    std::future::poll_fn(|cx| io.poll_send_held(cx)).await?;
                }
                Ok(tls)
            }
            Err((error, mut io)) => {
                // The alert, if the TLS layer wrote one: one attempt, without waiting.
                let _ =
                    std::future::poll_fn(|cx| std::task::Poll::Ready(io.poll_send_held(cx))).await;
                Err(error)
            }
        }
    };
    match tokio::time::timeout(deadline, accepting).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(error)) => Err(HandshakeError::Failed {
            reason: failure_reason(&error),
            error,
        }),
        Err(_) => Err(HandshakeError::TimedOut),
    }
}

/// The certificates the client presented (leaf first), as the TLS connection holds them;
/// `None` without any.
pub fn peer_chain<IO>(tls: &TlsStream<IO>) -> Option<&[CertificateDer<'static>]> {
    tls.get_ref()
        .1
        .peer_certificates()
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails every accept, counting the attempts.
    struct Failing(Arc<AtomicUsize>);

    impl Incoming for Failing {
        type Io = ();
        async fn accept(&mut self) -> io::Result<((), SocketAddr)> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Err(io::Error::other("Too many open files"))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_instead_of_spinning() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let (stop, rx) = shutdown();
        let task = tokio::spawn(accept_loop(
            Failing(attempts.clone()),
            Slots::new(10),
            rx,
            |_, _, _| async {},
        ));
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.trigger();
        task.await.unwrap();
        // 5+10+…+640 ms, then once a second: about 16 attempts in 10 s, not millions.
        let n = attempts.load(Ordering::Relaxed);
        assert!((10..=20).contains(&n), "{n} accept attempts in 10 s");
    }

    /// Yields the same kind of connection forever.
    struct Endless;

    impl Incoming for Endless {
        type Io = ();
        async fn accept(&mut self) -> io::Result<((), SocketAddr)> {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(((), SocketAddr::from(([127, 0, 0, 1], 1))))
        }
    }

    #[test]
    fn one_source_gets_at_most_its_share() {
        let refused = Counter::default();
        let slots = Slots::new(10).per_source(2).count_refused(refused);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a1 = slots.try_take(ip("192.0.2.1")).expect("first from a");
        let a2 = slots
            .try_take(ip("::ffff:192.0.2.1"))
            .expect("second from a");
        assert!(slots.try_take(ip("192.0.2.1")).is_none(), "third from a");
        // Another source is not affected; an IPv6 host counts per /64.
        let b = slots.try_take(ip("192.0.2.2")).expect("from b");
        let v6 = slots
            .try_take(ip("2001:db8::1"))
            .expect("first from the /64");
        let _v6b = slots
            .try_take(ip("2001:db8::ffff:1"))
            .expect("second from the /64");
        assert!(
            slots.try_take(ip("2001:db8::2")).is_none(),
            "third from the /64"
        );
        assert!(
            slots.try_take(ip("2001:db8:0:1::1")).is_some(),
            "another /64"
        );
        // Closing one gives its source a place again.
        drop(a1);
        let _a3 = slots.try_take(ip("192.0.2.1")).expect("after one closed");
        drop((a2, b, v6));
        // _v6b and _a3.
        assert_eq!(slots.in_use(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_over_the_limit_are_refused_and_counted() {
        let refused = Counter::default();
        let slots = Slots::new(3).count_refused(refused.clone());
        let (stop, rx) = shutdown();
        let held = Arc::new(tokio::sync::Notify::new());
        let h = held.clone();
        let task = tokio::spawn(accept_loop(
            Endless,
            slots.clone(),
            rx,
            move |_, _, slot| {
                let h = h.clone();
                async move {
                    h.notified().await;
                    drop(slot);
                }
            },
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(slots.in_use(), 3);
        assert!(refused.get() >= 10, "{}", refused.get());
        stop.trigger();
        task.await.unwrap();
        assert!(!slots.drain(Duration::from_millis(10)).await);
        held.notify_waiters();
        assert!(slots.drain(Duration::from_secs(1)).await);
    }
}
