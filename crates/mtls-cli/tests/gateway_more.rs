//! Gateway features beyond the single-listener flags: config file with several listeners, SNI
//! certificates and per-path policy; WebSocket upgrades; draining on SIGTERM; the client tunnel
//! (also to an IPv6 target); `mtls request` with an encrypted key, its body streamed as it
//! arrives, and its timeouts (head, idle, overall); the quickstart and its printed commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::gw::{curl, http_args, Files, Gateway, Upstream};

/// `mtls tunnel` from 127.0.0.1:`local` to localhost:`target`, presenting `c`.
fn start_tunnel(f: &Files, c: &common::gw::Leaf, local: u16, target: u16) -> std::process::Child {
    start_tunnel_with(f, c, local, target, &[])
}

fn start_tunnel_with(
    f: &Files,
    c: &common::gw::Leaf,
    local: u16,
    target: u16,
    extra: &[&str],
) -> std::process::Child {
    start_tunnel_to(f, c, local, &format!("localhost:{target}"), extra)
}

/// `mtls tunnel` from 127.0.0.1:`local` to `target` (`HOST:PORT`), presenting `c`.
fn start_tunnel_to(
    f: &Files,
    c: &common::gw::Leaf,
    local: u16,
    target: &str,
    extra: &[&str],
) -> std::process::Child {
    start_tunnel_at(f, c, &format!("127.0.0.1:{local}"), target, extra)
}

/// `mtls tunnel --listen listen` to `target` (`HOST:PORT`), presenting `c`.
fn start_tunnel_at(
    f: &Files,
    c: &common::gw::Leaf,
    listen: &str,
    target: &str,
    extra: &[&str],
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_mtls"))
        .args(["tunnel", "--listen", listen, "--target", target])
        .arg("--cert")
        .arg(&c.chain)
        .arg("--key")
        .arg(&c.key)
        .arg("--ca")
        .arg(f.root())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Connects to the tunnel's local port once it listens (5 s at most).
fn connect_local(local: u16) -> std::net::TcpStream {
    for _ in 0..50 {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", local)) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the tunnel does not listen on {local}");
}

/// A server on 127.0.0.1 that accepts (a few connections) and then says nothing for a minute.
fn silent_server() -> std::net::SocketAddr {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(60));
        drop(held);
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain-TCP upstream on 127.0.0.1: each of its first `n` connections is read once (the
/// request) and handed to `answer` on a thread of its own.
fn raw_upstream(
    n: usize,
    answer: impl Fn(std::net::TcpStream) + Send + Sync + 'static,
) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for s in l.incoming().take(n) {
            let Ok(mut s) = s else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                answer(s);
            });
        }
    });
    addr
}

/// A gateway configuration: `limits` (TOML lines of `[limits]`), one listener on `port` to
/// `upstream` allowing any trusted client, and `extra` (routes) at its end.
fn one_listener(port: u16, upstream: std::net::SocketAddr, limits: &str, extra: &str) -> String {
    format!(
        r#"
[limits]
{limits}
[[listener]]
listen = "127.0.0.1:{port}"
upstream = "http://{upstream}"
client_ca = ["ca-chain.pem"]
[[listener.certificate]]
cert = "server.chain.pem"
key = "server.key"
[listener.policy]
allow_any_trusted = true
{extra}
"#
    )
}

/// Starts a gateway on `toml`, written to `dir`.
fn start_with(dir: &std::path::Path, toml: &str) -> Gateway {
    let path = dir.join(format!("g-{}.toml", free_port()));
    std::fs::write(&path, toml).unwrap();
    Gateway::start(&["--config".into(), Files::p(&path)])
}

/// A reload reaches each listener on its own: while one listener's key is unreadable (a
/// rotation half done), another's new CRL still takes effect at once; the broken one keeps
/// its last good certificate (taking the rest of its reload) and goes on serving.
#[test]
fn a_listener_that_cannot_reload_does_not_hold_back_another_s_crl() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let two = f.pki.server(&["localhost"]);
    f.write_leaf("two", &two.cert.der, &two.key);
    let (p1, p2) = (free_port(), free_port());
    let toml = format!(
        r#"
[[listener]]
name = "one"
listen = "127.0.0.1:{p1}"
upstream = "http://{up}"
client_ca = ["ca-chain.pem"]
crl = ["crl.pem"]
[[listener.certificate]]
cert = "server.chain.pem"
key = "server.key"
[listener.policy]
allow_any_trusted = true

[[listener]]
name = "two"
listen = "127.0.0.1:{p2}"
upstream = "http://{up}"
client_ca = ["ca-chain.pem"]
[[listener.certificate]]
cert = "two.chain.pem"
key = "two.key"
[listener.policy]
allow_any_trusted = true
"#,
        up = up.addr
    );
    let g = start_with(dir.path(), &toml);
    let reader = f.client("reader");
    assert_eq!(curl(&g, &f, Some(&reader), "/", &[]).status, 200);
    // The CRL first: a reload between the two writes then only applies the CRL, and the
    // failure logged after the key's write comes with the CRL in place either way.
    f.write_crl(std::slice::from_ref(&reader.serial));
    std::fs::write(dir.path().join("two.key"), "not a key\n").unwrap();
    g.hup();
    let failed = common::wait_for_line(&g.stderr, &["reload failed", "two"]);
    // Listener two takes its new CAs and CRLs too, with its previous certificate.
    assert!(
        failed.contains("two: reloaded, but the previous certificate still serves for"),
        "{failed}"
    );
    // Refused in the handshake (required mode), while the gateway still serves (below).
    assert_eq!(curl(&g, &f, Some(&reader), "/", &[]).status, 0);
    // The second listener still serves with its last good certificate.
    let o = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(f.root())
        .arg("--cert")
        .arg(&reader.chain)
        .arg("--key")
        .arg(&reader.key)
        .arg(format!("https://localhost:{p2}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200");
}

#[test]
fn config_file_listeners_sni_certificates_and_route_policies() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let api = f.pki.server(&["api.example.com"]);
    f.write_leaf("api", &api.cert.der, &api.key);
    let (p1, p2) = (free_port(), free_port());
    let toml = format!(
        r#"
admin_listen = "127.0.0.1:0"
[[listener]]
name = "one"
listen = "127.0.0.1:{p1}"
upstream = "http://{up}"
client_ca = ["ca-chain.pem"]
crl = ["crl.pem"]
[[listener.certificate]]
cert = "server.chain.pem"
key = "server.key"
[[listener.certificate]]
cert = "api.chain.pem"
key = "api.key"
[listener.policy]
allow_cn = ["reader", "admin"]
[[listener.route]]
path_prefix = "/admin"
policy = {{ allow_cn = ["admin"] }}

[[listener]]
name = "two"
listen = "127.0.0.1:{p2}"
upstream = "http://{up}"
client_ca = ["ca-chain.pem"]
[[listener.certificate]]
cert = "server.chain.pem"
key = "server.key"
[listener.policy]
allow_any_trusted = true
"#,
        up = up.addr
    );
    std::fs::write(dir.path().join("gateway.toml"), toml).unwrap();
    let g = Gateway::start(&[
        "--config".into(),
        Files::p(&dir.path().join("gateway.toml")),
    ]);
    assert_eq!(g.port(), p1);
    let reader = f.client("reader");
    let admin = f.client("admin");
    assert_eq!(curl(&g, &f, Some(&reader), "/data", &[]).status, 200);
    assert_eq!(curl(&g, &f, Some(&reader), "/admin/x", &[]).status, 403);
    assert_eq!(curl(&g, &f, Some(&admin), "/admin/x", &[]).status, 200);
    // Other spellings of /admin that an upstream may normalise are refused, not routed to the
    // listener policy; a canonical path with a needed escape still passes.
    for sneaky in [
        "/%61dmin/x",
        "//admin/x",
        "/a/../admin/x",
        "/;x/admin/x",
        "/%2561dmin",
    ] {
        let r = curl(&g, &f, Some(&reader), sneaky, &["--path-as-is"]);
        assert_eq!(r.status, 400, "{sneaky}: {}", r.body);
        assert!(r.body.contains("INVALID_PATH"), "{}", r.body);
    }
    assert_eq!(curl(&g, &f, Some(&reader), "/data/a%20b", &[]).status, 200);
    // SNI picks the api.example.com certificate.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{p1} -servername api.example.com </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("api.example.com"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // The second listener has its own policy.
    let other = f.client("someone");
    let o = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(f.root())
        .arg("--cert")
        .arg(&other.chain)
        .arg("--key")
        .arg(&other.key)
        .arg("--resolve")
        .arg(format!("localhost:{p2}:127.0.0.1"))
        .arg(format!("https://localhost:{p2}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200");
}

/// An upstream that answers an Upgrade with 101 and then echoes bytes.
fn upgrade_upstream() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let Some(head) = read_head(&mut s) else {
                    return;
                };
                if !(head.contains("upgrade: websocket") && head.contains("connection: upgrade")) {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
                    return;
                }
                switch_and_echo(s);
            });
        }
    });
    addr
}

/// A request that asks for a WebSocket switch.
const WS_UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Reads a request head, lower-cased (`None` if the connection ends first).
fn read_head(s: &mut std::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            return None;
        }
        head.push(b[0]);
    }
    Some(String::from_utf8_lossy(&head).to_ascii_lowercase())
}

/// Answers a WebSocket switch, then echoes until a line ends (so that only the gateway ends a
/// tunnel that never sends one).
fn switch_and_echo(mut s: std::net::TcpStream) {
    let _ = s.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    let mut buf = [0u8; 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() || buf[..n].ends_with(b"\n") {
            break;
        }
    }
}

/// Answers with an event stream: a chunk every 100 ms for at most 30 s, until the peer hangs up.
fn send_events(mut s: std::net::TcpStream) {
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    for i in 0..300 {
        let event = format!("data: {i}\n\n");
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        if s.write_all(chunk.as_bytes()).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Answers with an event stream of one event, then holds the connection for 30 s without a
/// word (a long poll, a quiet stream).
fn send_events_then_wait(mut s: std::net::TcpStream) {
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    let event = "data: 0\n\n";
    let chunk = format!("{head}{:x}\r\n{event}\r\n", event.len());
    if s.write_all(chunk.as_bytes()).is_ok() {
        let mut buf = [0u8; 64];
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = s.read(&mut buf);
    }
}

/// Follows `path` on `g` with curl as `c` (`extra`: more curl arguments): the child, and the
/// `data:` lines as they come.
fn follow_events(
    g: &Gateway,
    f: &Files,
    c: &common::gw::Leaf,
    path: &str,
    extra: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = Command::new("curl")
        .args(extra)
        .args(["-sS", "-N", "--max-time", "40", "--cacert"])
        .arg(f.root())
        .arg("--cert")
        .arg(&c.chain)
        .arg("--key")
        .arg(&c.key)
        .arg(g.url(path))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, events) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("data:") && tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, events)
}

/// Waits until `child` exits, failing with `what` once `limit` has passed since `started`.
fn exit_within(
    child: &mut std::process::Child,
    started: std::time::Instant,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < limit, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An upstream that switches to h2c whenever a request carries `Upgrade` (as a lenient h2c
/// server, or one answering 101 to anything, does) and then keeps the raw bytes it receives;
/// other requests get `200 ok`. Every request head (lower-cased) and every byte after a switch
/// land in the returned list.
fn switching_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(16) {
            let Ok(mut s) = s else { continue };
            let seen = seen2.clone();
            std::thread::spawn(move || loop {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).unwrap_or(0) == 0 || head.len() > 65_536 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let switch = head.contains("\r\nupgrade:");
                seen.lock().unwrap().push(head);
                if !switch {
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                let _ = s.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
                );
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase());
                }
                return;
            });
        }
    });
    (addr, seen)
}

/// h2c smuggling: a client asks to switch to h2c (with `HTTP2-Settings`); were it forwarded,
/// an upstream that accepts would turn the connection into a raw tunnel in which the client
/// talks to it directly, past route policies and with identity headers of its own. Only
/// WebSocket switches are forwarded: the h2c request goes upstream as a plain request without
/// `Upgrade` or `HTTP2-Settings`; and an upstream answering a WebSocket request with a switch
/// to another protocol gets a 502.
#[test]
fn only_websocket_upgrades_are_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let (up, seen) = switching_upstream();
    let mut args = http_args(&f, &Upstream::start(), &["--allow-any-trusted"]);
    let i = args.iter().position(|a| a == "--upstream").unwrap();
    args[i + 1] = format!("http://{up}");
    let g = Gateway::start(&args);
    let c = f.client("smuggler");
    let out = common::gw::s_client(
        &g,
        &f,
        Some(&c),
        &["-quiet", "-alpn", "http/1.1"],
        &[
            b"GET /public HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
            b"GET /admin HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Client-Cert: Hash=00;Subject=\"CN=admin\"\r\n\r\n",
        ],
    );
    assert!(
        !out.contains(" 101 "),
        "the switch reached the client: {out}"
    );
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    let seen = seen.lock().unwrap().join("\n---\n");
    assert!(
        !seen.contains("upgrade:") && !seen.contains("http2-settings"),
        "the upgrade reached the upstream: {seen}"
    );
    assert!(
        !seen.contains("cn=admin"),
        "a forged identity reached the upstream: {seen}"
    );

    // A WebSocket request answered with a switch to h2c: not carried.
    let out = common::gw::s_client(
        &g,
        &f,
        Some(&c),
        &["-quiet", "-alpn", "http/1.1"],
        &[WS_UPGRADE],
    );
    assert!(out.contains("HTTP/1.1 502"), "{out}");
    assert!(out.contains("BAD_GATEWAY"), "{out}");
}

#[test]
fn websocket_upgrade_passes_through() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let ws = upgrade_upstream();
    let mut args = http_args(&f, &Upstream::start(), &["--allow-any-trusted"]);
    let i = args.iter().position(|a| a == "--upstream").unwrap();
    args[i + 1] = format!("http://{ws}");
    let g = Gateway::start(&args);
    let c = f.client("ws-client");
    let out = common::gw::s_client(
        &g,
        &f,
        Some(&c),
        &["-quiet", "-alpn", "http/1.1"],
        &[WS_UPGRADE, b"ping through the tunnel\n"],
    );
    assert!(out.contains("101 Switching Protocols"), "{out}");
    assert!(out.contains("ping through the tunnel"), "{out}");

    // A tunnel whose client is revoked is closed at the next reload, like a TCP-mode
    // connection (the upstream keeps echoing until a line ends, so only the gateway ends it).
    let revoked = f.client("ws-revoked");
    let started = std::time::Instant::now();
    let tunnel = tunnel_until(&g, &f, &revoked, || {
        f.write_crl(std::slice::from_ref(&revoked.serial));
        g.hup();
    });
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the revoked client's tunnel stayed open: {:?}",
        started.elapsed()
    );
    assert!(tunnel.contains("still here"), "{tunnel}");
}

/// A WebSocket tunnel through `g` as `c` that sends "still here" and no line end (the echoing
/// upstream never ends it); two seconds in, `then` runs. What came back once it closed (or
/// after 10 s).
fn tunnel_until(g: &Gateway, f: &Files, c: &common::gw::Leaf, then: impl FnOnce()) -> String {
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            common::gw::s_client(
                g,
                f,
                Some(c),
                &["-quiet", "-alpn", "http/1.1"],
                &[WS_UPGRADE, b"still here"],
            )
        });
        std::thread::sleep(Duration::from_millis(2000));
        then();
        t.join().unwrap()
    })
}

/// An upstream that waits before answering.
fn slow_upstream(delay: Duration) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                std::thread::sleep(delay);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow",
                );
            });
        }
    });
    addr
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let slow = slow_upstream(Duration::from_millis(1500));
    let mut args = http_args(&f, &Upstream::start(), &["--allow-any-trusted"]);
    let i = args.iter().position(|a| a == "--upstream").unwrap();
    args[i + 1] = format!("http://{slow}");
    let g = Gateway::start(&args);
    let c = f.client("c");
    let (port, root, chain, key) = (g.port(), f.root(), c.chain.clone(), c.key.clone());
    let inflight = std::thread::spawn(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", " %{http_code}", "--cacert"])
            .arg(root)
            .arg("--cert")
            .arg(chain)
            .arg("--key")
            .arg(key)
            .arg("--resolve")
            .arg(format!("localhost:{port}:127.0.0.1"))
            .arg(format!("https://localhost:{port}/"))
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(500));
    let status = g.terminate();
    let o = inflight.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "slow 200",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(status.success(), "{status}");
}

#[test]
fn tunnel_carries_plaintext_clients_over_mtls_and_refuses_remote_listen() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let g = Gateway::start(&http_args(&f, &up, &["--allow-cn", "tunnel-user"]));
    let c = f.client("tunnel-user");
    let local = free_port();
    let mut t = start_tunnel(&f, &c, local, g.port());
    let mut ok = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let o = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Host: localhost",
                &format!("http://127.0.0.1:{local}/plain"),
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&o.stdout) == "200" {
            ok = true;
            break;
        }
    }
    let _ = t.kill();
    let _ = t.wait();
    assert!(ok, "plaintext request through the tunnel failed");
    assert!(up
        .last()
        .iter()
        .any(|(k, v)| k == "x-forwarded-client-cert" && v.contains("CN=tunnel-user")));
    let o = Command::new(env!("CARGO_BIN_EXE_mtls"))
        .args(["tunnel", "--listen", "0.0.0.0:0", "--target", "localhost:1"])
        .arg("--cert")
        .arg(&c.chain)
        .arg("--key")
        .arg(&c.key)
        .arg("--ca")
        .arg(f.root())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("non-loopback"));
}

/// `curl --unix-socket SOCK http://localhost/plain` as the current user (or as `as_user`, by
/// `setpriv`): the HTTP status curl saw, "000" when the connection failed or was closed.
fn curl_unix(sock: &std::path::Path, as_user: Option<&str>) -> String {
    let mut cmd = match as_user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "curl",
            ]);
            c
        }
        None => Command::new("curl"),
    };
    let o = cmd
        .args(["-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--unix-socket")
        .arg(sock)
        .arg("http://localhost/plain")
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `--listen unix:PATH`: local clients reach the server through a socket file of mode 0600
/// that serves only its owner: another user's connection is closed unserved even when the
/// file and its directory let it connect (its credentials are checked). A second tunnel on a
/// live socket is refused, a socket left by a killed tunnel is replaced, any other file at the
/// path is refused, and a tunnel that stops removes its socket.
#[test]
fn tunnel_on_a_unix_socket_serves_only_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let g = Gateway::start(&http_args(&f, &up, &["--allow-cn", "tunnel-user"]));
    let c = f.client("tunnel-user");
    let sock = dir.path().join("tunnel.sock");
    let listen = format!("unix:{}", sock.display());
    let target = format!("localhost:{}", g.port());
    let start = |listen: &str| start_tunnel_at(&f, &c, listen, &target, &[]);
    let wait_served = || {
        for _ in 0..50 {
            if curl_unix(&sock, None) == "200" {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    let mut t = start(&listen);
    assert!(wait_served(), "no answer through the tunnel's socket");
    assert!(up
        .last()
        .iter()
        .any(|(k, v)| k == "x-forwarded-client-cert" && v.contains("CN=tunnel-user")));
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket's mode is {mode:o}");

    // Another user, let through by the file system: refused by its credentials. Needs root
    // to become that user.
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if root {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let requests = up.count();
        assert_eq!(curl_unix(&sock, Some("65534")), "000");
        assert_eq!(
            up.count(),
            requests,
            "another user's request reached the server"
        );
        assert_eq!(curl_unix(&sock, None), "200", "the owner is still served");
    } else {
        println!("skipped the other-user check: not root, cannot run curl as another user");
    }

    // A live socket is not taken over.
    let second = start(&listen).wait_with_output().unwrap();
    assert_ne!(second.status.code(), Some(0));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another process listens on it"), "{err}");
    assert_eq!(curl_unix(&sock, None), "200");

    // Killed (no clean-up): the next tunnel replaces the stale socket.
    t.kill().unwrap();
    let out = t.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    if root {
        assert!(
            log.contains("refused a connection from another user") && log.contains("uid=65534"),
            "{log}"
        );
    }
    assert!(sock.exists());
    let mut t = start(&listen);
    assert!(wait_served(), "a stale socket was not replaced");

    // Stopped: the socket is removed.
    let pid = t.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    t.wait().unwrap();
    assert!(!sock.exists(), "the stopped tunnel left its socket");

    // Anything else at the path is refused, and left alone.
    std::fs::write(&sock, b"not a socket").unwrap();
    let other = start(&listen).wait_with_output().unwrap();
    assert_ne!(other.status.code(), Some(0));
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket");
}

/// `--target [::1]:PORT` reaches a server on the IPv6 loopback: the brackets are the syntax of
/// an IPv6 address with a port, not part of the host (the tunnel used to look up `[::1]` and
/// never connected), and the server is verified as the address ::1. Skipped, saying so, on a
/// machine without an IPv6 loopback.
#[test]
fn tunnel_reaches_an_ipv6_target_in_brackets() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("skipped: this machine has no IPv6 loopback ([::1] cannot be bound)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let s = f.pki.server(&["localhost", "::1"]);
    let v6 = f.write_leaf("v6", &s.cert.der, &s.key);
    let g = Gateway::start(
        &[
            "--listen",
            "[::1]:0",
            "--cert",
            &Files::p(&v6.chain),
            "--key",
            &Files::p(&v6.key),
            "--client-ca",
            &Files::p(&f.ca_chain()),
            "--crl",
            &Files::p(&f.crl()),
            "--upstream",
            &format!("http://{}", up.addr),
            "--allow-cn",
            "tunnel-user",
        ]
        .map(String::from),
    );
    assert!(g.addr.is_ipv6(), "{}", g.addr);
    let c = f.client("tunnel-user");
    let local = free_port();
    let mut t = start_tunnel_to(&f, &c, local, &format!("[::1]:{}", g.port()), &[]);
    let mut status = String::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let o = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5"])
            // The host the gateway serves (its certificate's address), not the tunnel's.
            .args(["-H", "Host: [::1]"])
            .arg(format!("http://127.0.0.1:{local}/over-ipv6"))
            .output()
            .unwrap();
        status = String::from_utf8_lossy(&o.stdout).into_owned();
        if status == "200" {
            break;
        }
    }
    let _ = t.kill();
    let out = t.wait_with_output().unwrap();
    assert_eq!(
        status,
        "200",
        "no answer through the tunnel to [::1]:{}:\n{}",
        g.port(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(up
        .last()
        .iter()
        .any(|(k, v)| k == "x-forwarded-client-cert" && v.contains("CN=tunnel-user")));
}

/// Holds a test server's thread until the test releases it (or a minute passes): a server
/// that stalls at a chosen point.
struct Gate(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

impl Gate {
    fn new() -> (std::sync::mpsc::Sender<()>, Gate) {
        let (release, released) = std::sync::mpsc::channel();
        (release, Gate(std::sync::Mutex::new(released)))
    }

    fn wait(&self) {
        let _ = self.0.lock().unwrap().recv_timeout(Duration::from_secs(60));
    }
}

/// A TLS server on 127.0.0.1 (common/https.rs) with a certificate of `f`'s PKI for localhost
/// and 127.0.0.1, answering every request with `handler`.
fn scripted_server(
    f: &Files,
    handler: impl Fn(&common::https::Request, &mut dyn Write) -> std::io::Result<()>
        + Send
        + Sync
        + 'static,
) -> common::https::HttpsServer {
    let s = f.pki.server(&["localhost", "127.0.0.1"]);
    common::https::HttpsServer::start(
        "127.0.0.1:0",
        vec![s.cert.der.clone(), f.pki.intermediate_der()],
        &s.key,
        handler,
    )
}

/// `mtls request https://127.0.0.1:PORT/`, presenting `c` and trusting `f`'s root, with `extra`
/// flags; stdout and stderr piped.
fn request_to(f: &Files, c: &common::gw::Leaf, port: u16, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mtls"));
    cmd.args(["request", &format!("https://127.0.0.1:{port}/")])
        .arg("--cert")
        .arg(&c.chain)
        .arg("--key")
        .arg(&c.key)
        .arg("--ca")
        .arg(f.root())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The key pin of a certificate (SHA-256 of its SubjectPublicKeyInfo).
fn spki_of(der: &[u8]) -> mtls_pki::KeyPin {
    mtls_pki::KeyPin::of_spki(
        mtls_pki::pem_io::parse_certificate(der)
            .unwrap()
            .public_key()
            .raw,
    )
}

/// The key pin of the gateways' server certificate.
fn server_key(f: &Files) -> mtls_pki::KeyPin {
    let chain = std::fs::read(f.server_chain()).unwrap();
    spki_of(&mtls_pki::pem_io::certificates(&chain).unwrap()[0])
}

/// `--pinned-pubkey`: `mtls request` reaches a server whose key is the pinned one (curl's
/// sha256//BASE64 or hex), and refuses one the CA vouches for whose key is not, naming the
/// key it saw (exit 1, nothing sent).
#[test]
fn request_refuses_a_server_whose_key_is_not_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let g = Gateway::start(&http_args(&f, &up, &["--allow-any-trusted"]));
    let c = f.client("pinner");
    let server = server_key(&f);
    let other = spki_of(&f.pki.client("other").cert.der);
    let run = |pins: &[String]| {
        let mut extra = vec!["--server-name".to_string(), "localhost".to_string()];
        for p in pins {
            extra.extend(["--pinned-pubkey".to_string(), p.clone()]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        run_bounded(
            request_to(&f, &c, g.port(), &extra),
            Duration::from_secs(20),
        )
        .0
    };
    for pins in [
        vec![server.to_string()],
        vec![other.to_string(), server.0.to_string()],
    ] {
        let out = run(&pins);
        assert!(
            out.status.success(),
            "{pins:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(&[other.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not pinned") && stderr.contains(&server.to_string()),
        "{stderr}"
    );
    assert_eq!(up.count(), 2, "the refused request reached the upstream");
}

/// Runs `cmd` to its end, killing it if it runs past `limit`: its output and how long it ran.
fn run_bounded(mut cmd: Command, limit: Duration) -> (std::process::Output, Duration) {
    let start = std::time::Instant::now();
    let mut child = cmd.spawn().unwrap();
    while child.try_wait().unwrap().is_none() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (out, start.elapsed())
}

/// A handler sending a `pieces`-line body, one line every `every` after the head.
fn trickle(
    pieces: usize,
    every: Duration,
) -> impl Fn(&common::https::Request, &mut dyn Write) -> std::io::Result<()> + Send + Sync {
    move |_, out| {
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            pieces * "piece 00\n".len()
        )?;
        out.flush()?;
        for i in 0..pieces {
            std::thread::sleep(every);
            writeln!(out, "piece {i:02}")?;
            out.flush()?;
        }
        Ok(())
    }
}

/// The body [`trickle`] sends.
fn trickled(pieces: usize) -> String {
    (0..pieces).map(|i| format!("piece {i:02}\n")).collect()
}

/// A body that keeps flowing is read to its end however long it takes: 20 lines over 5 s, with
/// --timeout 2s (the head) and --idle-timeout 2s (pauses of 250 ms), all arrive and the exit is
/// 0. The 30 s whole-request deadline `mtls request` had cut every body longer than that.
#[test]
fn request_reads_a_body_that_trickles_past_the_head_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("c");
    let server = scripted_server(&f, trickle(20, Duration::from_millis(250)));
    let cmd = request_to(
        &f,
        &c,
        server.addr.port(),
        &["--timeout", "2s", "--idle-timeout", "2s"],
    );
    let (out, took) = run_bounded(cmd, Duration::from_secs(40));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{:?} after {took:?}: {stderr}",
        out.status
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        trickled(20),
        "{stderr}"
    );
    assert!(took >= Duration::from_secs(4), "the body came in {took:?}");
}

/// --idle-timeout bounds the pauses in the body, not the wait for the head: a head that takes
/// 2 s comes within --timeout 6s although --idle-timeout is 1s. (reqwest's own read timeout
/// counts from the request's start until the head, so taken alone as the idle timeout it would
/// have cut this wait after 1 s.)
#[test]
fn request_waits_for_a_slow_head_longer_than_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("c");
    let server = scripted_server(&f, |_, out| {
        std::thread::sleep(Duration::from_secs(2));
        common::https::respond(out, "200 OK", "text/plain", b"late but whole\n")
    });
    let cmd = request_to(
        &f,
        &c,
        server.addr.port(),
        &["--timeout", "6s", "--idle-timeout", "1s"],
    );
    let (out, took) = run_bounded(cmd, Duration::from_secs(40));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{:?} after {took:?}: {stderr}",
        out.status
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "late but whole\n");
}

/// A server that sends the head and part of the body, then nothing: `mtls request` gives up
/// after --idle-timeout with exit 1 and a message naming the flag, having written what came.
#[test]
fn request_fails_when_the_server_stalls_after_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("c");
    let (release, gate) = Gate::new();
    let server = scripted_server(&f, move |_, out| {
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nfirst part\n"
        )?;
        out.flush()?;
        // Then silence, until the test is over (at most a minute).
        gate.wait();
        Ok(())
    });
    let cmd = request_to(
        &f,
        &c,
        server.addr.port(),
        &["--timeout", "5s", "--idle-timeout", "1s"],
    );
    let (out, took) = run_bounded(cmd, Duration::from_secs(40));
    let _ = release.send(());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "after {took:?}: {stderr}");
    assert!(
        stderr.contains("the server sent nothing for 1s (--idle-timeout)"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "first part\n");
    assert!(took < Duration::from_secs(15), "gave up after {took:?}");
}

/// A server that reads the request and never answers: exit 1 after --timeout, naming it.
#[test]
fn request_fails_when_the_response_head_never_comes() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("c");
    let (release, gate) = Gate::new();
    let server = scripted_server(&f, move |_, _| {
        gate.wait();
        Ok(())
    });
    let cmd = request_to(
        &f,
        &c,
        server.addr.port(),
        &["--timeout", "1s", "--idle-timeout", "5s"],
    );
    let (out, took) = run_bounded(cmd, Duration::from_secs(40));
    let _ = release.send(());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "after {took:?}: {stderr}");
    assert!(stderr.contains("within 1s (--timeout)"), "{stderr}");
    assert!(took < Duration::from_secs(15), "gave up after {took:?}");
}

/// A server that accepts the connection but never finishes the TLS handshake: exit 1 after
/// --connect-timeout, naming it.
#[test]
fn request_fails_when_the_connection_does_not_open_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("c");
    let silent = silent_server();
    let cmd = request_to(
        &f,
        &c,
        silent.port(),
        &["--connect-timeout", "1s", "--timeout", "10s"],
    );
    let (out, took) = run_bounded(cmd, Duration::from_secs(40));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "after {took:?}: {stderr}");
    assert!(stderr.contains("within 1s (--connect-timeout)"), "{stderr}");
    assert!(took < Duration::from_secs(8), "gave up after {took:?}");
}

/// --max-time caps the whole request even while the body flows: a 5 s trickle is cut after
/// 2 s with exit 1, naming the flag; what came before it is on stdout.
#[test]
fn request_max_time_cuts_a_body_that_keeps_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("c");
    let server = scripted_server(&f, trickle(20, Duration::from_millis(250)));
    let cmd = request_to(&f, &c, server.addr.port(), &["--max-time", "2s"]);
    let (out, took) = run_bounded(cmd, Duration::from_secs(40));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "after {took:?}: {stderr}");
    assert!(
        stderr.contains("took longer than 2s (--max-time)"),
        "{stderr}"
    );
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        trickled(20).starts_with(&body) && body.len() < trickled(20).len(),
        "{body:?}"
    );
    assert!(took < Duration::from_secs(15), "gave up after {took:?}");
}

/// `mtls request` writes the response body as it arrives, as curl does: 64 MiB from a server
/// that then pauses are on stdout while the response is still open, and the client never held
/// them all (its peak memory stays well under the body's size). It used to read the whole body
/// into memory first, so a fast server could make it hold gigabytes.
#[test]
fn request_streams_the_body_instead_of_holding_it() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const BODY: usize = 64 << 20;

    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("c");
    let (release, gate) = Gate::new();
    let server = scripted_server(&f, move |_, out| {
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            BODY + 5
        )?;
        let block = vec![b'x'; 64 << 10];
        for _ in 0..BODY / block.len() {
            out.write_all(&block)?;
        }
        out.flush()?;
        // The rest once the test has looked (at most a minute).
        gate.wait();
        out.write_all(b"tail\n")?;
        out.flush()
    });
    let mut child = request_to(&f, &c, server.addr.port(), &[]).spawn().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let mut stdout = child.stdout.take().unwrap();
    let counter = received.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut tail = Vec::new();
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return tail,
                Ok(n) => {
                    counter.fetch_add(n, Ordering::SeqCst);
                    tail.extend_from_slice(&buf[..n]);
                    let keep = tail.len().saturating_sub(16);
                    tail.drain(..keep);
                }
            }
        }
    });
    let start = std::time::Instant::now();
    while received.load(Ordering::SeqCst) < BODY && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = received.load(Ordering::SeqCst);
    // Peak resident memory of the client so far.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let peak_kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let _ = release.send(());
    if seen < BODY {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let tail = reader.join().unwrap();
    assert!(
        seen >= BODY,
        "only {seen} of the first {BODY} bytes reached stdout while the response was open: \
         the body is held until it ends\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        peak_kib * 1024 < BODY / 2,
        "the client's peak memory ({peak_kib} KiB) grew with the {BODY}-byte body"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(received.load(Ordering::SeqCst), BODY + 5);
    assert!(
        tail.ends_with(b"xxxtail\n"),
        "{:?}",
        String::from_utf8_lossy(&tail)
    );
}

#[test]
fn tunnel_gives_up_on_a_server_that_never_finishes_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("tunnel-user");
    let silent = silent_server();
    let local = free_port();
    let mut t = start_tunnel(&f, &c, local, silent.port());
    let mut conn = connect_local(local);
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    // Closed by the tunnel once the handshake has taken too long (10 s).
    assert_eq!(conn.read(&mut buf).unwrap_or(0), 0);
    let waited = started.elapsed();
    let _ = t.kill();
    let out = t.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(25),
        "{waited:?} {stderr}"
    );
    assert!(stderr.contains("no TLS connection"), "{stderr}");
}

/// A keep-alive connection through the tunnel that carries a request every 300 ms stays open
/// past `--idle-timeout 1s`; once silent, the tunnel closes it after about a second and says
/// why.
#[test]
fn tunnel_closes_connections_idle_for_longer_than_its_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let g = Gateway::start(&http_args(&f, &up, &["--allow-cn", "tunnel-user"]));
    let c = f.client("tunnel-user");
    let local = free_port();
    let mut t = start_tunnel_with(&f, &c, local, g.port(), &["--idle-timeout", "1s"]);
    let mut conn = connect_local(local);
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..8 {
        conn.write_all(b"GET /plain HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).unwrap();
        got.extend_from_slice(buf.get(..n).unwrap());
        std::thread::sleep(Duration::from_millis(300));
    }
    let busy = started.elapsed();
    let answers = String::from_utf8_lossy(&got)
        .matches("HTTP/1.1 200")
        .count();
    assert_eq!(answers, 8, "{}", String::from_utf8_lossy(&got));
    assert!(busy > Duration::from_secs(2), "{busy:?}");
    let silent = std::time::Instant::now();
    let mut buf = [0u8; 64];
    assert_eq!(conn.read(&mut buf).unwrap_or(0), 0, "closed by the tunnel");
    let waited = silent.elapsed();
    let _ = t.kill();
    let out = t.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(5),
        "{waited:?} {stderr}"
    );
    assert!(stderr.contains("without traffic"), "{stderr}");
}

/// A local client that connects and then neither reads nor writes, while the server keeps
/// sending: the tunnel's buffers fill, nothing moves in either direction, and `--idle-timeout`
/// must still close the connection (it waited on the local write for ever, holding its slot).
#[test]
fn tunnel_idle_timeout_closes_a_local_client_that_stops_reading() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    // A TCP upstream that sends to every connection until it is closed (at most 256 MB).
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in upstream.incoming().take(4) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..4096 {
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--mode",
        "tcp",
        "--cert",
        &Files::p(&f.server_chain()),
        "--key",
        &Files::p(&f.server_key()),
        "--client-ca",
        &Files::p(&f.ca_chain()),
        "--crl",
        &Files::p(&f.crl()),
        "--upstream",
        &up_addr.to_string(),
        "--allow-cn",
        "tunnel-user",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let g = Gateway::start(&args);
    let c = f.client("tunnel-user");
    let local = free_port();
    let mut t = start_tunnel_with(&f, &c, local, g.port(), &["--idle-timeout", "1s"]);
    let conn = connect_local(local);
    let started = std::time::Instant::now();
    // The tunnel says why it closed the connection; without the bound it never does.
    let stderr = t.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut said = Vec::new();
    let closed = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("without traffic") => break true,
            Ok(line) => said.push(line),
            Err(_) if started.elapsed() > Duration::from_secs(20) => break false,
            Err(_) => {}
        }
    };
    let _ = t.kill();
    let _ = t.wait();
    drop(conn);
    assert!(
        closed,
        "the stalled connection was not closed within 20 s: {said:?}"
    );
}

#[test]
fn request_with_an_encrypted_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let g = Gateway::start(&http_args(&f, &up, &["--allow-any-trusted"]));
    let c = f.pki.client("enc-client");
    let leaf = f.write_leaf("enc", &c.cert.der, &c.key);
    std::fs::write(
        &leaf.key,
        c.key
            .to_encrypted_pem_with_iterations(b"key passphrase", 10_000)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    std::fs::write(dir.path().join("pw"), "key passphrase\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("pw"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let base = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mtls"))
            .args([
                "request",
                &g.url("/api/secure"),
                "-X",
                "POST",
                "-d",
                "{\"a\":1}",
                "-H",
                "Content-Type: application/json",
                "-i",
            ])
            .arg("--cert")
            .arg(&leaf.chain)
            .arg("--key")
            .arg(&leaf.key)
            .arg("--ca")
            .arg(f.root())
            .args(extra)
            .env_remove("MTLS_PASSPHRASE")
            .output()
            .unwrap()
    };
    let o = base(&["--passphrase-file", &Files::p(&dir.path().join("pw"))]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("200 OK") && out.contains("CN=enc-client"),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = base(&[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("passphrase"));
    // A redirect is the answer (as with curl): the client certificate is not presented to
    // wherever it points.
    let o = Command::new(env!("CARGO_BIN_EXE_mtls"))
        .args(["request", &g.url("/redirect"), "-i"])
        .arg("--cert")
        .arg(&leaf.chain)
        .arg("--key")
        .arg(&leaf.key)
        .arg("--ca")
        .arg(f.root())
        .args(["--passphrase-file", &Files::p(&dir.path().join("pw"))])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("302 Found") && out.contains("elsewhere.invalid"),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // An error answer with --fail exits 22 even when nobody reads the output (`| head -0`):
    // the closed pipe ends the output, not the status check.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtls"))
        .args([
            "request",
            &g.url("/api/secure"),
            "-f",
            "-H",
            "Host: elsewhere.invalid",
        ])
        .arg("--cert")
        .arg(&leaf.chain)
        .arg("--key")
        .arg(&leaf.key)
        .arg("--ca")
        .arg(f.root())
        .args(["--passphrase-file", &Files::p(&dir.path().join("pw"))])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(22),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn quickstart_serves_and_its_printed_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtls"))
        .current_dir(dir.path())
        .args(["quickstart", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let l2 = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            l2.lock().unwrap().push(l);
        }
    });
    let mut commands = Vec::new();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        commands = lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.trim().to_string())
            .filter(|l| (l.starts_with("curl ") || l.contains(" request ")) && l.contains("--cert"))
            .collect();
        if commands.len() == 2 && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
    }
    assert_eq!(commands.len(), 2, "{:?}", lines.lock().unwrap());
    for cmd in &commands {
        let o = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|_| panic!("{cmd}: {out} {}", String::from_utf8_lossy(&o.stderr)));
        assert_eq!(v["message"], "Authenticated via mTLS");
        assert_eq!(v["client"], "client-app");
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// Writes `name`, the configuration of a gateway on `port` whose upstream is gateway `b` over
/// mTLS (as `a_cert`), verified with `upstream_ca` and the CRLs `upstream_crl` (TOML list
/// items), serving any trusted client with no client CRL of its own.
fn gateway_to_gateway(
    dir: &std::path::Path,
    name: &str,
    port: u16,
    b: &Gateway,
    a_cert: &common::gw::Leaf,
    upstream_ca: &str,
    upstream_crl: &str,
) -> std::path::PathBuf {
    let toml = format!(
        r#"
[[listener]]
listen = "127.0.0.1:{port}"
upstream = "https://localhost:{pb}"
upstream_ca = ["{upstream_ca}"]
upstream_crl = [{upstream_crl}]
client_ca = ["ca-chain.pem"]
upstream_certificate = {{ cert = "{chain}", key = "{key}" }}
[[listener.certificate]]
cert = "server.chain.pem"
key = "server.key"
[listener.policy]
allow_any_trusted = true
"#,
        pb = b.port(),
        chain = Files::p(&a_cert.chain),
        key = Files::p(&a_cert.key),
    );
    let p = dir.join(name);
    std::fs::write(&p, toml).unwrap();
    p
}

/// The serial of the gateways' server certificate.
fn server_serial(f: &Files) -> mtls_pki::Serial {
    let chain = std::fs::read(f.server_chain()).unwrap();
    let cert = mtls_pki::pem_io::certificates(&chain).unwrap().remove(0);
    mtls_pki::Serial::from_be_bytes(
        mtls_pki::pem_io::parse_certificate(&cert)
            .unwrap()
            .raw_serial(),
    )
}

/// An upstream that carries a WebSocket switch (then echoes until a line ends) and answers
/// anything else with an event stream (a chunk every 100 ms for at most 30 s).
fn tunnel_or_stream_upstream() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || match read_head(&mut s) {
                Some(head) if head.starts_with("get /quiet") => send_events_then_wait(s),
                Some(head) if head.contains("upgrade: websocket") => switch_and_echo(s),
                Some(_) => send_events(s),
                None => {}
            });
        }
    });
    addr
}

/// `upstream_pinned_pubkey`: the gateway reaches an https:// upstream whose key is pinned
/// and answers 502 for one its upstream_ca vouches for with another key; a pin on a plain
/// upstream does not start.
#[test]
fn an_upstream_whose_key_is_not_pinned_is_a_bad_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let b = Gateway::start(&http_args(&f, &up, &["--allow-cn", "gateway-a"]));
    let a_cert = f.client("gateway-a");
    let (b_key, other) = (server_key(&f), spki_of(&f.pki.client("other").cert.der));
    let client = f.client("end-user");
    for (pin, status) in [(b_key.to_string(), 200), (other.to_string(), 502)] {
        let config = gateway_to_gateway(
            dir.path(),
            "a.toml",
            free_port(),
            &b,
            &a_cert,
            "ca-chain.pem",
            "",
        );
        let toml = std::fs::read_to_string(&config).unwrap().replace(
            "upstream_crl = [",
            &format!("upstream_pinned_pubkey = [\"{pin}\"]\nupstream_crl = ["),
        );
        std::fs::write(&config, toml).unwrap();
        let a = Gateway::start(&["--config".into(), Files::p(&config)]);
        let r = curl(&a, &f, Some(&client), "/pinned", &[]);
        assert_eq!(r.status, status, "{pin}: {} {}", r.body, r.stderr);
    }
    assert_eq!(up.count(), 1);
    let o = Command::new(env!("CARGO_BIN_EXE_mtls"))
        .arg("gateway")
        .args(http_args(
            &f,
            &up,
            &[
                "--allow-any-trusted",
                "--upstream-pinned-pubkey",
                &b_key.to_string(),
            ],
        ))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("not one"));
}

/// What an upstream server revoked meanwhile is still carrying, through a gateway checking
/// it (`upstream_crl`), is cut within seconds: a WebSocket tunnel is closed and a quiet event
/// stream ends with an error, pooled or on a connection of its own (no new request would ever
/// stop either).
#[test]
fn a_tunnel_and_a_stream_from_an_upstream_revoked_meanwhile_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let mut b_args = http_args(&f, &Upstream::start(), &["--allow-cn", "gateway-a"]);
    let i = b_args.iter().position(|a| a == "--upstream").unwrap();
    b_args[i + 1] = format!("http://{}", tunnel_or_stream_upstream());
    let b = Gateway::start(&b_args);
    let a_cert = f.client("gateway-a");
    let config = gateway_to_gateway(
        dir.path(),
        "a.toml",
        free_port(),
        &b,
        &a_cert,
        "ca-chain.pem",
        "\"crl.pem\"",
    );
    let a = Gateway::start(&["--config".into(), Files::p(&config)]);
    let c = f.client("end-user");
    // A quiet stream (one event, then nothing), and one more answering a request that asked
    // for a WebSocket switch (its connection is one of its own, not pooled).
    let (mut quiet, events) = follow_events(&a, &f, &c, "/quiet", &[]);
    let (mut unswitched, events_too) = follow_events(
        &a,
        &f,
        &c,
        "/quiet",
        &[
            "--http1.1",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
    );
    for e in [&events, &events_too] {
        e.recv_timeout(Duration::from_secs(10))
            .expect("no event through both gateways");
    }
    let started = std::time::Instant::now();
    let tunnel = tunnel_until(&a, &f, &c, || f.write_crl(&[server_serial(&f)]));
    assert!(tunnel.contains("101 Switching Protocols"), "{tunnel}");
    assert!(tunnel.contains("still here"), "{tunnel}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the tunnel to the revoked upstream stayed open: {:?}",
        started.elapsed()
    );
    for (stream, what) in [(&mut quiet, "pooled"), (&mut unswitched, "unswitched")] {
        let status = exit_within(
            stream,
            started,
            Duration::from_secs(10),
            &format!("the {what} stream from the revoked upstream was not cut"),
        );
        assert!(!status.success(), "{what}: curl saw a clean end");
    }
    let logged = a.stderr.lock().unwrap().join("\n");
    assert!(
        logged.contains("closing a tunnel: the upstream server is no longer trusted"),
        "{logged}"
    );
    assert_eq!(
        logged
            .matches("cutting a streaming answer: the upstream server is no longer trusted")
            .count(),
        2,
        "{logged}"
    );
}

#[test]
fn https_upstream_is_verified_and_can_be_mtls_too() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    // Gateway B: the upstream, requiring the certificate of gateway A.
    let b = Gateway::start(&http_args(&f, &up, &["--allow-cn", "gateway-a"]));
    let a_cert = f.client("gateway-a");
    let pa = free_port();
    let write = |name: &str, ca: &str, upstream_crl: &str| {
        gateway_to_gateway(dir.path(), name, pa, &b, &a_cert, ca, upstream_crl)
    };
    // The CRL's issuer (the intermediate) must be in upstream_ca.
    let good = write("a.toml", "ca-chain.pem", "\"crl.pem\"");
    let a = Gateway::start(&["--config".into(), Files::p(&good)]);
    let client = f.client("end-user");
    let r = curl(&a, &f, Some(&client), "/through", &[]);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    // B saw gateway A's certificate; A's own identity headers for end-user were replaced by B.
    let h = up.last();
    let xfcc: Vec<_> = h
        .iter()
        .filter(|(k, _)| k == "x-forwarded-client-cert")
        .collect();
    assert_eq!(xfcc.len(), 1);
    assert!(xfcc[0].1.contains("CN=gateway-a"), "{xfcc:?}");
    // B's certificate is revoked while A keeps a connection to it: that connection is not
    // used again (it would be, by keep-alive, for as long as it lasts), and the new one's
    // handshake refuses B.
    let r = curl(&a, &f, Some(&client), "/through", &[]);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    f.write_crl(&[server_serial(&f)]);
    // The CRL file is looked at again within a second. (A lists no CRL for its own clients:
    // a reload of A, which a changed client CRL makes, would start a new pool anyway.)
    std::thread::sleep(Duration::from_millis(1_300));
    let r = curl(&a, &f, Some(&client), "/through", &[]);
    assert_eq!(r.status, 502, "{} {}", r.body, r.stderr);
    // An older CRL (number 1, revoking nothing) put back, then a reload of A: the reload is
    // refused (its new upstream pool starts no lower than the CRL the old one used) and B
    // stays refused. A new pool starting from the file alone accepted B again.
    let now = time::OffsetDateTime::now_utc();
    let older = mtls_pki::revocation::build_crl(
        &f.pki.intermediate,
        1,
        now - time::Duration::minutes(1),
        time::Duration::days(1),
        &[],
    )
    .unwrap();
    let tmp = dir.path().join("crl.pem.old");
    std::fs::write(&tmp, mtls_pki::pem_io::encode("X509 CRL", &older)).unwrap();
    std::fs::rename(&tmp, f.crl()).unwrap();
    a.hup();
    common::wait_for_line(&a.stderr, &["reload failed"]);
    std::thread::sleep(Duration::from_millis(1_300));
    let r = curl(&a, &f, Some(&client), "/through", &[]);
    assert_eq!(r.status, 502, "{} {}", r.body, r.stderr);
    drop(a);
    // An upstream whose certificate does not verify is a 502, never a silent plaintext fallback.
    let other = mtls_test_util::TestPki::new("other");
    std::fs::write(
        dir.path().join("other-root.pem"),
        mtls_pki::pem_io::encode("CERTIFICATE", &other.root_der()),
    )
    .unwrap();
    let bad = write("bad.toml", "other-root.pem", "");
    let a = Gateway::start(&["--config".into(), Files::p(&bad)]);
    let r = curl(&a, &f, Some(&client), "/through", &[]);
    assert_eq!(r.status, 502, "{}", r.body);
}

#[test]
fn connection_limit_and_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let port = free_port();
    let toml = format!(
        r#"
admin_listen = "127.0.0.1:0"
[limits]
max_connections = 2
header_read_timeout = "1s"
[[listener]]
listen = "127.0.0.1:{port}"
upstream = "http://{up}"
client_ca = ["ca-chain.pem"]
client_auth = "optional"
[[listener.certificate]]
cert = "server.chain.pem"
key = "server.key"
[listener.policy]
allow_any_trusted = true
"#,
        up = up.addr
    );
    std::fs::write(dir.path().join("g.toml"), toml).unwrap();
    let g = Gateway::start(&["--config".into(), Files::p(&dir.path().join("g.toml"))]);
    // Two idle connections use the limit; a third is closed at once.
    let _a = std::net::TcpStream::connect(g.addr).unwrap();
    let _b = std::net::TcpStream::connect(g.addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut c = std::net::TcpStream::connect(g.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        c.read(&mut buf).unwrap_or(usize::MAX),
        0,
        "the third connection must be closed"
    );
    let o = Command::new("curl")
        .args(["-sS", &format!("http://{}/metrics", g.admin.unwrap())])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("mtls_connections_refused_total 1"));
    drop((_a, _b));
    std::thread::sleep(Duration::from_millis(300));
    // A client that sends half a request head is cut off by the header read timeout.
    let leaf = f.client("slowloris");
    let out = common::gw::s_client(
        &g,
        &f,
        Some(&leaf),
        &["-quiet"],
        &[b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n"],
    );
    assert!(!out.contains("200"), "{out}");
    assert_eq!(up.count(), 0);

    // With optional client certificates, a connection without one that opens HTTP/2 and then
    // says nothing is closed after header_read_timeout: it cannot hold a connection slot.
    let started = std::time::Instant::now();
    let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    // Without the timeout, s_client's 10 s watchdog would end it.
    common::gw::s_client(&g, &f, None, &["-quiet", "-alpn", "h2"], &[preface]);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(8),
        "the silent connection stayed open {waited:?}"
    );
}

/// A gateway with `upstream_timeout = "1s"` in front of `upstream`.
fn gateway_with_upstream_timeout(dir: &std::path::Path, upstream: std::net::SocketAddr) -> Gateway {
    let toml = one_listener(free_port(), upstream, r#"upstream_timeout = "1s""#, "");
    start_with(dir, &toml)
}

/// Requests in flight upstream are bounded (`limits.max_upstream_requests`): with two held by
/// an upstream that never answers, a third is answered 503 UPSTREAM_BUSY at once instead of
/// opening yet another upstream connection; once the two end (504), requests go through
/// again.
#[test]
fn requests_in_flight_upstream_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("busy");
    let limits = "upstream_timeout = \"3s\"\nmax_upstream_requests = 2";
    let g = start_with(
        dir.path(),
        &one_listener(free_port(), silent_server(), limits, ""),
    );
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = g.url("/slow");
            let (root, chain, key) = (f.root(), c.chain.clone(), c.key.clone());
            std::thread::spawn(move || {
                Command::new("curl")
                    .args([
                        "-sS",
                        "--max-time",
                        "10",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                    ])
                    .arg("--cacert")
                    .arg(root)
                    .arg("--cert")
                    .arg(chain)
                    .arg("--key")
                    .arg(key)
                    .arg(url)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let r = curl(&g, &f, Some(&c), "/third", &[]);
    assert_eq!(r.status, 503, "{} {}", r.body, r.stderr);
    assert!(r.body.contains("UPSTREAM_BUSY"), "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once"
    );
    for h in held {
        let out = h.join().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "504");
    }
    // The slots are free again: the next request reaches the (silent) upstream.
    let r = curl(&g, &f, Some(&c), "/after", &[]);
    assert_eq!(r.status, 504, "{} {}", r.body, r.stderr);
}

/// Transfer codings other than `chunked`, which hyper does not undo, are not passed on as if
/// their bytes were the body: a request using one is `501`, an upstream answer using one
/// `502`; plain chunked still flows both ways.
#[test]
fn transfer_codings_other_than_chunked_are_refused_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("coder");
    let upstream = raw_upstream(2, |mut s| {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
    });
    let g = start_with(dir.path(), &one_listener(free_port(), upstream, "", ""));
    let r = curl(&g, &f, Some(&c), "/coded", &[]);
    assert_eq!(r.status, 502, "{} {}", r.body, r.stderr);
    assert!(r.body.contains("transfer coding"), "{}", r.body);

    let up = Upstream::start();
    let g = start_with(dir.path(), &one_listener(free_port(), up.addr, "", ""));
    let out = common::gw::s_client(
        &g,
        &f,
        Some(&c),
        &[],
        &[b"POST /up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
    );
    assert!(out.contains("HTTP/1.1 501"), "{out}");
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    let r = curl(
        &g,
        &f,
        Some(&c),
        "/up",
        &["-H", "Transfer-Encoding: chunked", "--data-binary", "hello"],
    );
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
}

/// Python: sends `POST /upload` announcing 100 bytes of body and only the first, then waits
/// (at most 20 s) for the answer; prints its status code and how long it took.
const STALLED_UPLOAD: &str = r#"
import socket, ssl, sys, time
port, root, cert, key = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=root)
ctx.load_cert_chain(cert, key)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="localhost")
s.sendall(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nx")
start = time.monotonic()
s.settimeout(20)
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(4096)
    if not chunk:
        break
    head += chunk
print(head.split(b" ")[1].decode() if head else "closed", round(time.monotonic() - start, 1))
"#;

/// One client certificate cannot hold every upstream slot, nor hold its own for long: with two
/// uploads of one client stalled after their first byte (the upstream waiting for the rest),
/// that client is refused `429 CLIENT_BUSY` past `max_upstream_requests_per_client` while
/// another client still gets through; each stalled upload ends with `408 BODY_TIMEOUT` once it
/// has paused for `body_timeout` (not after `upstream_timeout`), and its slot comes back.
#[test]
fn a_client_stalling_its_uploads_holds_neither_every_slot_nor_its_own_for_long() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let (a, b) = (f.client("staller"), f.client("other"));
    let up = Upstream::start();
    let limits = "upstream_timeout = \"30s\"\nbody_timeout = \"2s\"\nmax_upstream_requests = 3\nmax_upstream_requests_per_client = 2";
    let g = start_with(dir.path(), &one_listener(free_port(), up.addr, limits, ""));
    let stalled: Vec<_> = (0..2)
        .map(|_| {
            let args = [
                g.port().to_string(),
                Files::p(&f.root()),
                Files::p(&a.chain),
                Files::p(&a.key),
            ];
            std::thread::spawn(move || {
                Command::new("python3")
                    .args(["-c", STALLED_UPLOAD])
                    .args(args)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let r = curl(&g, &f, Some(&a), "/more", &[]);
    assert_eq!(r.status, 429, "{} {}", r.body, r.stderr);
    assert!(r.body.contains("CLIENT_BUSY"), "{}", r.body);
    let r = curl(&g, &f, Some(&b), "/other", &[]);
    assert_eq!(r.status, 200, "another client gets through: {}", r.body);
    for h in stalled {
        let out = h.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (code, secs) = text.trim().split_once(' ').unwrap_or(("", ""));
        let secs: f64 = secs.parse().unwrap_or(f64::MAX);
        assert_eq!(
            code,
            "408",
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            (1.5..15.0).contains(&secs),
            "ended after {secs} s, not after the 2 s body_timeout"
        );
    }
    let r = curl(&g, &f, Some(&a), "/after", &[]);
    assert_eq!(r.status, 200, "the slots came back: {}", r.body);
}

/// A request's upstream slot is held while its answer's body is still coming: a streamed
/// answer counts against `max_upstream_requests` until its last byte.
#[test]
fn an_upstream_slot_is_held_until_the_answer_body_ends() {
    use std::sync::mpsc;
    use std::sync::Mutex;
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("streamer");
    // Answers the first request with its head and half its body, the rest once released
    // (at most 30 s); later requests at once.
    let (headed, head_sent) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let held = Mutex::new(Some((headed, released)));
    let upstream = raw_upstream(4, move |mut s| {
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nhalf");
        let _ = s.flush();
        let first = held.lock().unwrap().take();
        if let Some((headed, released)) = first {
            let _ = headed.send(());
            let _ = released.recv_timeout(Duration::from_secs(30));
        }
        let _ = s.write_all(b"rest");
    });
    let toml = one_listener(free_port(), upstream, "max_upstream_requests = 1", "");
    let g = start_with(dir.path(), &toml);
    let first = {
        let url = g.url("/stream");
        let (root, chain, key) = (f.root(), c.chain.clone(), c.key.clone());
        std::thread::spawn(move || {
            Command::new("curl")
                .args(["-sS", "--max-time", "30", "--cacert"])
                .arg(root)
                .arg("--cert")
                .arg(chain)
                .arg("--key")
                .arg(key)
                .arg(url)
                .output()
                .unwrap()
        })
    };
    head_sent
        .recv_timeout(Duration::from_secs(20))
        .expect("the first request reached the upstream");
    // Its answer's head is on its way; its body has not ended.
    std::thread::sleep(Duration::from_millis(300));
    let r = curl(&g, &f, Some(&c), "/second", &[]);
    assert_eq!(r.status, 503, "{} {}", r.body, r.stderr);
    assert!(r.body.contains("UPSTREAM_BUSY"), "{}", r.body);
    release.send(()).unwrap();
    let out = first.join().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "halfrest");
    // The slot came back with the body's end.
    let r = curl(&g, &f, Some(&c), "/third", &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "halfrest"),
        "{}",
        r.stderr
    );
}

/// A streaming answer (an event stream) is cut when a reload stops allowing its client on the
/// path, as a WebSocket tunnel is; a reload that still allows it leaves it flowing.
#[test]
fn a_streaming_answer_is_cut_when_a_reload_disallows_its_client() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("watcher");
    // An event stream: a chunk every 100 ms for at most 30 s, until the gateway hangs up.
    let upstream = raw_upstream(2, send_events);
    let port = free_port();
    let config = |allowed: &str| {
        let route = format!(
            "[[listener.route]]\npath_prefix = \"/events\"\npolicy = {{ allow_cn = [{allowed}] }}"
        );
        one_listener(port, upstream, "", &route)
    };
    let path = dir.path().join("events.toml");
    std::fs::write(&path, config(r#""watcher""#)).unwrap();
    let g = Gateway::start(&["--config".into(), Files::p(&path)]);
    let (mut child, events) = follow_events(&g, &f, &c, "/events", &[]);
    let next = |what: &str| {
        events
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{what}: no event ({e})"))
    };
    next("before any reload");
    // Still allowed (another client added): the stream goes on.
    std::fs::write(&path, config(r#""watcher", "other""#)).unwrap();
    g.hup();
    std::thread::sleep(Duration::from_millis(1500));
    while events.try_recv().is_ok() {}
    next("after a reload that still allows the client");
    // No longer allowed on /events: the stream is cut, as an error, within seconds.
    std::fs::write(&path, config(r#""other""#)).unwrap();
    g.hup();
    let started = std::time::Instant::now();
    let status = exit_within(
        &mut child,
        started,
        Duration::from_secs(15),
        "the stream was not cut",
    );
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    // 18: the transfer ended before its end (a chunked body without its last chunk).
    assert!(!status.success(), "curl saw a clean end: {err}");
    assert!(
        g.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("cutting a streaming answer after reload")),
        "not logged"
    );
}

/// `limits.max_connections_per_source`: one host holding its share of connections (here two
/// that never start their handshake) cannot open more, and gets a place back when it closes one.
#[test]
fn one_source_cannot_take_more_than_its_share_of_connections() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("neighbour");
    let up = Upstream::start();
    let limits = "max_connections_per_source = 2";
    let g = start_with(dir.path(), &one_listener(free_port(), up.addr, limits, ""));
    assert_eq!(curl(&g, &f, Some(&c), "/", &[]).status, 200, "alone");
    // Its connection is closed and given back before the two are opened.
    std::thread::sleep(Duration::from_millis(500));
    let first = std::net::TcpStream::connect(g.addr).unwrap();
    let _second = std::net::TcpStream::connect(g.addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let r = curl(&g, &f, Some(&c), "/", &[]);
    assert_eq!(r.status, 0, "a third connection was served: {}", r.body);
    drop(first);
    // The gateway notices the close (its handshake read ends) and frees the place.
    let started = std::time::Instant::now();
    loop {
        if curl(&g, &f, Some(&c), "/", &[]).status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no place after a connection closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_upstream_timeout_counts_from_the_end_of_the_upload() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("uploader");
    // An upload that starts 1.5 s after the request and trickles for 2 s more (four parts of
    // 40 KB), three times the upstream timeout in all: the upstream reads it as it comes and
    // answers at its end.
    let up = Upstream::start();
    let g = gateway_with_upstream_timeout(dir.path(), up.addr);
    let started = std::time::Instant::now();
    let mut child = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(f.root())
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", g.port()))
        .arg("--cert")
        .arg(&c.chain)
        .arg("--key")
        .arg(&c.key)
        .args(["-T", "-"])
        .arg(g.url("/upload"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..4 {
        stdin
            .write_all(&[b'x'; 40_000])
            .expect("curl ended before its upload: the gateway gave up on it");
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.ends_with("\n200"), "{out}");
    assert!(out.contains("\"body_bytes\":160000"), "{out}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the upload was not slow"
    );
    // An upstream that never answers: 504 one timeout after the request (and its body) went;
    // and one that does not even read the body (32 MB, more than every buffer on the way
    // holds): 504 one timeout after it stopped taking it, not never.
    let g = gateway_with_upstream_timeout(dir.path(), silent_server());
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 32 << 20]).unwrap();
    let big = format!("@{}", big.display());
    for extra in [
        vec![],
        vec!["--data-binary", "small body"],
        vec!["--data-binary", big.as_str(), "--http1.1"],
    ] {
        let started = std::time::Instant::now();
        let r = curl(&g, &f, Some(&c), "/", &extra);
        assert_eq!(r.status, 504, "{} {}", r.body, r.stderr);
        assert!(r.body.contains("UPSTREAM_TIMEOUT"), "{}", r.body);
        let t = started.elapsed();
        assert!(
            t >= Duration::from_millis(900) && t < Duration::from_secs(8),
            "{t:?}"
        );
    }
}

#[test]
fn an_upstream_answer_with_both_length_and_chunked_is_framed_by_chunked() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("c");
    // An upstream that frames its answer both ways (RFC 9112 6.3: chunked wins).
    let addr = raw_upstream(4, |mut conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
    });
    let g = gateway_with_upstream_timeout(dir.path(), addr);
    for version in ["--http1.1", "--http2"] {
        let r = curl(&g, &f, Some(&c), "/", &[version]);
        assert_eq!(r.status, 200, "{version}: {} {}", r.body, r.stderr);
        assert_eq!(r.body, "hello", "{version}: {}", r.stderr);
    }
}

/// A TCP-mode gateway in front of `upstream` allowing any trusted client, with `limits`.
fn tcp_listener(dir: &std::path::Path, upstream: std::net::SocketAddr, limits: &str) -> Gateway {
    let toml = format!(
        r#"
admin_listen = "127.0.0.1:0"
[limits]
{limits}
[[listener]]
listen = "127.0.0.1:{port}"
mode = "tcp"
upstream = "{upstream}"
client_ca = ["ca-chain.pem"]
crl = ["crl.pem"]
[[listener.certificate]]
cert = "server.chain.pem"
key = "server.key"
[listener.policy]
allow_any_trusted = true
"#,
        port = free_port()
    );
    start_with(dir, &toml)
}

/// Python: opens a TCP-mode connection as the client `argv[3..5]`, sends a line and prints the
/// echo (or `closed`), then holds the connection without reading until killed.
const TUNNEL_CLIENT: &str = r#"
import socket, ssl, sys, time
port, root, cert, key = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=root)
ctx.load_cert_chain(cert, key)
try:
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="localhost")
    s.settimeout(5)
    s.sendall(b"ping\n")
    got = s.recv(5)
    print(got.decode() if got else "closed", flush=True)
except Exception as e:
    print("closed", e, flush=True)
time.sleep(60)
"#;

fn tunnel_client(g: &Gateway, f: &Files, c: &common::gw::Leaf) -> std::process::Child {
    Command::new("python3")
        .args(["-c", TUNNEL_CLIENT, &g.port().to_string()])
        .args([f.root(), c.chain.clone(), c.key.clone()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn first_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    let _ = std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line);
    line.trim().to_string()
}

/// TCP-mode tunnels hold their connection slot for their whole life, as HTTP connections do:
/// with `max_connections = 2`, two open tunnels leave no room for a third (closed before it
/// reaches the upstream, and counted), and a shutdown waits for open tunnels (up to
/// `drain_timeout`) rather than exiting at once.
#[test]
fn tcp_tunnels_count_against_the_connection_limit_and_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("tunnel");
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let upstream = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let reached = reached.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                reached.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    };
    let g = tcp_listener(
        dir.path(),
        upstream,
        "max_connections = 2\ndrain_timeout = \"6s\"",
    );
    let mut open: Vec<_> = (0..2).map(|_| tunnel_client(&g, &f, &c)).collect();
    for child in &mut open {
        assert_eq!(first_line(child), "ping");
    }
    let mut third = tunnel_client(&g, &f, &c);
    assert!(first_line(&mut third).starts_with("closed"));
    let _ = third.kill();
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 2);
    let (_, page) = common::ca::curl(&[&format!("http://{}/metrics", g.admin.unwrap())]);
    assert!(
        page.lines()
            .any(|l| l.starts_with("mtls_connections_refused_total") && l.ends_with(" 1")),
        "{page}"
    );
    // A shutdown drains: the open tunnels are waited for (here until drain_timeout).
    let started = std::time::Instant::now();
    let status = g.terminate();
    let waited = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        waited >= Duration::from_secs(5),
        "exited after {waited:?} with tunnels open"
    );
    for mut child in open {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A TCP-mode client revoked while it is not reading (its socket buffers full, the upstream
/// still sending) is cut: the upstream connection is closed at once, and the client's within
/// a few seconds, rather than both held as long as the client likes.
#[test]
fn a_revoked_tcp_client_that_stops_reading_is_cut_from_its_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("slow-reader");
    let (ended, upstream_ended) = std::sync::mpsc::channel::<()>();
    let upstream = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut buf = [0u8; 5];
            let _ = s.read_exact(&mut buf);
            let _ = s.write_all(&buf);
            // Flood until the gateway closes this connection.
            let chunk = [b'x'; 16384];
            while s.write_all(&chunk).is_ok() {}
            let _ = ended.send(());
        });
        addr
    };
    let g = tcp_listener(dir.path(), upstream, "");
    let mut client = tunnel_client(&g, &f, &c);
    assert_eq!(first_line(&mut client), "ping");
    // Let the buffers fill: the client reads nothing more.
    std::thread::sleep(Duration::from_secs(1));
    f.write_crl(std::slice::from_ref(&c.serial));
    g.hup();
    upstream_ended
        .recv_timeout(Duration::from_secs(15))
        .expect("the upstream connection of a revoked client that stopped reading stayed open");
    let _ = client.kill();
    let _ = client.wait();
}
