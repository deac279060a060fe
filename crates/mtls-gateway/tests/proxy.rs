//! The HTTP proxy against real clients (curl, a raw TLS client) and an upstream that records
//! the request lines it receives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{curl, Files, Gateway, Upstream};

#[test]
fn h2_cookie_crumbs_reach_an_http1_upstream_as_one_cookie_header() {
    let f = Files::new();
    let up = Upstream::start();
    let g = Gateway::start(&f, up.addr, &["app"], "");
    let c = f.client("app");
    // curl sends each -H as its own header field: two `cookie` fields on one h2 stream.
    let r = curl(
        &g,
        &f,
        &c,
        "/",
        &["--http2", "-H", "Cookie: a=1", "-H", "Cookie: b=2; c=3"],
    );
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    let seen = up.last();
    let cookies = seen.header_lines("cookie");
    assert_eq!(cookies.len(), 1, "{:?}", seen.lines);
    assert_eq!(
        cookies[0].split_once(':').unwrap().1.trim(),
        "a=1; b=2; c=3",
        "{:?}",
        seen.lines
    );
    // One cookie field is forwarded as it came.
    let r = curl(&g, &f, &c, "/", &["--http2", "-H", "Cookie: only=1"]);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    let seen = up.last();
    assert_eq!(seen.header_lines("cookie").len(), 1, "{:?}", seen.lines);
    assert!(seen.header_lines("cookie")[0].ends_with(": only=1"));
}

#[test]
fn a_get_with_a_chunked_body_reaches_the_upstream_with_its_body() {
    let f = Files::new();
    let up = Upstream::start();
    let g = Gateway::start(&f, up.addr, &["app"], "");
    let c = f.client("app");
    for (version, framing) in [
        // HTTP/1.1 chunked.
        ("--http1.1", "Transfer-Encoding: chunked"),
        // h2 DATA frames with no content-length: a body of unknown length too.
        ("--http2", "Content-Length:"),
    ] {
        let r = curl(
            &g,
            &f,
            &c,
            "/search",
            &[
                version,
                "-X",
                "GET",
                "-H",
                framing,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                r#"{"query":"x"}"#,
            ],
        );
        assert_eq!(r.status, 200, "{version}: {} {}", r.body, r.stderr);
        let seen = up.last();
        assert!(seen.request_line.starts_with("GET /search "), "{seen:?}");
        assert_eq!(
            String::from_utf8_lossy(&seen.body),
            r#"{"query":"x"}"#,
            "{version}: {seen:?}"
        );
    }
    // A GET without a body still goes without one (no empty chunked body is added).
    let r = curl(&g, &f, &c, "/plain", &["--http1.1"]);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    let seen = up.last();
    assert!(
        seen.header_lines("transfer-encoding").is_empty(),
        "{seen:?}"
    );
    assert!(seen.header_lines("content-length").is_empty(), "{seen:?}");
}

#[test]
fn an_upstream_connection_answered_before_its_upload_ended_is_not_pooled() {
    use std::io::Write;
    use std::time::Duration;
    let f = Files::new();
    let up = Upstream::start();
    let g = Gateway::start(&f, up.addr, &["app"], "");
    let c = f.client("app");
    // Requests with bodies read whole by the upstream, and a HEAD (its answer has no body),
    // share one upstream connection.
    for _ in 0..2 {
        let r = curl(
            &g,
            &f,
            &c,
            "/upload",
            &["--http1.1", "--data-binary", "abc"],
        );
        assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
        let r = curl(&g, &f, &c, "/head", &["--http1.1", "-I"]);
        assert!(
            r.body.starts_with("HTTP/1.1 200"),
            "{} {}",
            r.body,
            r.stderr
        );
    }
    let first = up.requests();
    assert_eq!(first.len(), 4);
    assert!(first.iter().all(|r| r.conn == first[0].conn), "{first:?}");
    assert_eq!(String::from_utf8_lossy(&first[2].body), "abc");

    // An upload of 100,000 bytes of which 10 have come: the upstream answers after the head.
    let mut s = common::tls(&g, &f, &c);
    s.write_all(
        b"POST /early HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100000\r\n\r\n0123456789",
    )
    .unwrap();
    s.flush().unwrap();
    assert_eq!(common::read_response(&mut s), (200, "ok".to_string()));
    let early = up.last();
    assert!(early.request_line.starts_with("POST /early "), "{early:?}");
    // Its upstream connection is mid-body: closed, not parked in the pool (the client's
    // connection is still open, its upload unfinished).
    assert!(
        common::within(Duration::from_secs(5), || up.is_closed(early.conn)),
        "the upstream connection of an unfinished upload stayed open"
    );
    // The next request goes on a connection in a known state.
    let r = curl(&g, &f, &c, "/after", &["--http1.1", "--data-binary", "xyz"]);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    let after = up.last();
    assert!(after.request_line.starts_with("POST /after "), "{after:?}");
    assert_ne!(after.conn, early.conn, "{after:?}");
    assert_eq!(String::from_utf8_lossy(&after.body), "xyz");
    drop(s);
}
