//! The OCSP client (`mtls_client::ocsp::fetch`) against responders that misbehave: a replayed
//! answer carrying another nonce, garbage, an answer about another certificate, a responder
//! that is down — each refused with its code; the same signed answer without a nonce asked is
//! accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};

use mtls_client::ocsp::{fetch, OcspError};
use mtls_ocsp::{build_request, parse_request, CertStatus, IssuerInfo, Responder};
use mtls_test_util::TestPki;
use time::{Duration, OffsetDateTime};

/// Answers every request with `body` (HTTP 200); returns its URL.
fn responder_answering(body: Vec<u8>) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}/ocsp")
}

/// Answers every request with `307` to `location`; returns its URL.
fn redirecting_to(location: &str) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let head = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            let _ = s.write_all(head.as_bytes());
        }
    });
    format!("http://{addr}/ocsp")
}

/// A "good" answer about `serial`, signed by the intermediate, echoing `nonce`.
fn signed(pki: &TestPki, serial: &mtls_pki::Serial, nonce: Option<&[u8]>) -> Vec<u8> {
    let issuer = IssuerInfo::from_der(pki.intermediate.der()).unwrap();
    let req = build_request(&issuer, serial, nonce).unwrap();
    let req = parse_request(&req, std::slice::from_ref(&issuer)).unwrap();
    let key =
        mtls_pki::PrivateKey::from_pem_or_der(pki.intermediate.key().pkcs8_der(), None).unwrap();
    let responder = Responder::new(&issuer, pki.intermediate.der().to_vec(), key).unwrap();
    let now = OffsetDateTime::now_utc();
    responder
        .sign(
            &req,
            &[CertStatus::Good],
            now,
            now - Duration::minutes(1),
            Some(now + Duration::hours(1)),
        )
        .unwrap()
}

#[tokio::test]
async fn answers_that_do_not_verify_are_refused_with_their_reason() {
    let pki = TestPki::new("ocsp");
    let leaf = pki.client("c");
    let other = pki.client("other");
    let issuer = pki.intermediate_der();
    let client = mtls_client::ClientBuilder::new()
        .build_plain_http()
        .unwrap();
    let now = OffsetDateTime::now_utc();
    let ask = |url: String, nonce: bool| {
        let (client, leaf, issuer) = (client.clone(), leaf.cert.der.clone(), issuer.clone());
        async move { fetch(&client, &leaf, &issuer, Some(&url), nonce, now).await }
    };

    // A replayed answer: correctly signed, for this certificate, but echoing another nonce.
    let replay = responder_answering(signed(&pki, &leaf.cert.serial, Some(b"someone-elses-01")));
    let e = ask(replay.clone(), true).await.unwrap_err();
    assert!(
        matches!(&e, OcspError::Invalid { detail, .. } if detail.contains("nonce")),
        "{e}"
    );
    assert_eq!(e.code(), "ocsp_invalid");
    // Without a nonce asked (as for a staple), the same signed answer is fine.
    let ok = ask(replay, false).await.unwrap();
    assert_eq!(ok.verified.status, CertStatus::Good);

    // An answer about another certificate.
    let wrong = responder_answering(signed(&pki, &other.cert.serial, None));
    let e = ask(wrong, false).await.unwrap_err();
    assert_eq!(e.code(), "ocsp_invalid", "{e}");

    // Garbage.
    let garbage = responder_answering(b"not an OCSP response".to_vec());
    let e = ask(garbage, false).await.unwrap_err();
    assert_eq!(e.code(), "ocsp_invalid", "{e}");

    // A redirect (here to a responder that would answer well): not followed, so a responder
    // or anyone on the path cannot send the request to an internal address of its choosing.
    let target = responder_answering(signed(&pki, &leaf.cert.serial, None));
    let redirect = redirecting_to(&target);
    let e = ask(redirect, false).await.unwrap_err();
    assert_eq!(e.code(), "ocsp_unavailable", "{e}");
    assert!(e.to_string().contains("307"), "{e}");

    // Nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = ask(format!("http://127.0.0.1:{port}/ocsp"), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "ocsp_unavailable", "{e}");

    // No responder anywhere: these test leaves name none.
    let e = fetch(&client, &leaf.cert.der, &issuer, None, false, now)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "ocsp_no_url", "{e}");
}
