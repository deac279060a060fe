//! Asking a certificate's OCSP responder (RFC 6960 over plain HTTP, as AIA URLs are), with the
//! answer verified before anyone uses it, and stapling servers' own certificates with it.
//!
//! [`fetch`] is the one OCSP client of mtls (`mtls verify --ocsp`, the stapler). [`staple`]
//! keeps the staples of a server's certificates current: fetched at start, refreshed at half
//! the response's life ([`mtls_ocsp::VerifiedResponse::refresh_at`]), replaced only by a
//! response that verifies and says "good", and removed once the last good one is no longer
//! current (its nextUpdate, or [`mtls_ocsp::NO_NEXT_UPDATE_MAX_AGE`] after its thisUpdate
//! without one) — never a bad or stale staple.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mtls_pki::Serial;
use mtls_serve::Shutdown;
use rustls_pki_types::CertificateDer;

use time::OffsetDateTime;

/// Largest OCSP response read.
const MAX_RESPONSE: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why no verified answer was had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OcspError {
    /// The certificate names no OCSP responder and none was given.
    #[error("the certificate names no OCSP responder")]
    NoResponder,
    /// The responder could not be reached or did not answer 200.
    #[error("OCSP responder {url}: {detail}")]
    Unavailable {
        /// The responder.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The answer does not verify (signature, signer, CertID, times, nonce) or is an error
    /// status.
    #[error("OCSP answer from {url}: {detail}")]
    Invalid {
        /// The responder.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
}

impl OcspError {
    /// A stable code: `ocsp_no_url`, `ocsp_unavailable`, `ocsp_invalid`.
    pub fn code(&self) -> &'static str {
        match self {
            OcspError::NoResponder => "ocsp_no_url",
            OcspError::Unavailable { .. } => "ocsp_unavailable",
            OcspError::Invalid { .. } => "ocsp_invalid",
        }
    }
}

/// A verified OCSP answer.
#[derive(Clone, Debug)]
pub struct OcspAnswer {
    /// The DER OCSPResponse as received (what a server staples).
    pub der: Vec<u8>,
    /// What it says, verified.
    pub verified: mtls_ocsp::VerifiedResponse,
    /// The responder asked.
    pub url: String,
}

/// Asks the responder of `leaf` (its AIA URL, or `url`) about it and verifies the answer against
/// `issuer` at `now`; with `nonce`, the answer must echo a fresh random nonce (a stapled
/// response cannot: it is shared by every client).
pub async fn fetch(
    client: &reqwest::Client,
    leaf: &CertificateDer<'_>,
    issuer: &CertificateDer<'_>,
    url: Option<&str>,
    nonce: bool,
    now: OffsetDateTime,
) -> Result<OcspAnswer, OcspError> {
    let invalid = |url: &str, detail: String| OcspError::Invalid {
        url: url.to_string(),
        detail,
    };
    let urls = match url {
        Some(u) => vec![u.to_string()],
        None => mtls_ocsp::responder_urls(leaf).map_err(|e| invalid("(AIA)", e.to_string()))?,
    };
    let url = urls.first().ok_or(OcspError::NoResponder)?;
    let unavailable = |detail: String| OcspError::Unavailable {
        url: url.clone(),
        detail,
    };
    if !url.starts_with("http://") {
        return Err(unavailable("only http:// responders are supported".into()));
    }
    let parsed =
        mtls_pki::pem_io::parse_certificate(leaf).map_err(|e| invalid(url, e.to_string()))?;
    let serial = Serial::from_be_bytes(parsed.raw_serial());
    let info = mtls_ocsp::IssuerInfo::from_der(issuer).map_err(|e| invalid(url, e.to_string()))?;
    let mut nonce_bytes = [0u8; 16];
    let nonce = if nonce {
        aws_lc_rs::rand::fill(&mut nonce_bytes)
            .map_err(|_| invalid(url, "no randomness for the nonce".into()))?;
        Some(&nonce_bytes[..])
    } else {
        None
    };
    let request =
        mtls_ocsp::build_request(&info, &serial, nonce).map_err(|e| invalid(url, e.to_string()))?;
    let resp = client
        .post(url)
        .header(http::header::CONTENT_TYPE, "application/ocsp-request")
        .body(request)
        .send()
        .await
        .map_err(|e| unavailable(crate::ca::error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(unavailable(format!("HTTP {}", resp.status())));
    }
    let der = crate::body_limited(resp, MAX_RESPONSE)
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .to_vec();
    let verified = mtls_ocsp::verify_response(&der, issuer, &serial, now)
        .map_err(|e| invalid(url, e.to_string()))?;
    if nonce.is_some() && verified.nonce.as_deref() != nonce {
        return Err(invalid(
            url,
            "the answer does not echo our nonce (replay?)".into(),
        ));
    }
    Ok(OcspAnswer {
        der,
        verified,
        url: url.clone(),
    })
}

/// A staple kept for one leaf.
#[derive(Debug)]
struct Kept {
    der: Vec<u8>,
    refresh_at: OffsetDateTime,
    /// Served until then: when clients stop taking it as current.
    expires: OffsetDateTime,
}

impl Kept {
    /// What is kept of a verified "good" answer received at `now`. It ends when
    /// `verify_response` stops accepting it (nextUpdate, or thisUpdate +
    /// `NO_NEXT_UPDATE_MAX_AGE` without one: a staple held longer is refused by clients that
    /// require one), and is asked again by the rule every OCSP user here shares.
    fn new(answer: OcspAnswer, now: OffsetDateTime) -> Kept {
        Kept {
            refresh_at: answer.verified.refresh_at(now),
            expires: answer.verified.current_until,
            der: answer.der,
        }
    }

    /// Whether it may still be served at `now`.
    fn current(&self, now: OffsetDateTime) -> bool {
        now < self.expires
    }
}

/// How often the stapler looks at the served certificates (a reload brings new ones).
const STAPLE_TICK: Duration = Duration::from_secs(5);
/// Pause before asking again after a failure.
const STAPLE_RETRY: time::Duration = time::Duration::seconds(60);

/// Keeps OCSP staples on the certificates `served()` returns (called again on every round, so
/// a reloaded configuration is stapled too) until `shutdown`. Certificates without an issuer in
/// their chain or without an OCSP responder are served without a staple.
pub async fn staple(
    served: impl Fn() -> Arc<mtls_tls::SniResolver> + Send,
    mut shutdown: Shutdown,
) {
    let client = match crate::ClientBuilder::new()
        .timeout(TIMEOUT)
        .build_plain_http()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "OCSP stapling disabled: no HTTP client");
            return;
        }
    };
    // By the leaf's DER: a reload that keeps the certificate keeps its staple.
    let mut kept: HashMap<Vec<u8>, Kept> = HashMap::new();
    let mut silent: HashMap<Vec<u8>, OffsetDateTime> = HashMap::new();
    loop {
        let resolver = served();
        let now = OffsetDateTime::now_utc();
        // Forget certificates no longer served.
        let live: Vec<Vec<u8>> = resolver
            .served()
            .iter()
            .filter_map(|s| s.chain().first().map(|l| l.as_ref().to_vec()))
            .collect();
        kept.retain(|k, _| live.contains(k));
        silent.retain(|k, _| live.contains(k));
        for s in resolver.served() {
            let chain = s.chain();
            let (Some(leaf), Some(issuer)) = (chain.first(), chain.get(1)) else {
                continue;
            };
            let key = leaf.as_ref().to_vec();
            let due = kept.get(&key).is_none_or(|k| now >= k.refresh_at)
                && silent.get(&key).is_none_or(|until| now >= *until);
            if due {
                match fetch(&client, leaf, issuer, None, false, now).await {
                    Ok(a) if a.verified.status == mtls_ocsp::CertStatus::Good => {
                        tracing::info!(url = %a.url, next_update = ?a.verified.next_update, "OCSP staple fetched");
                        silent.remove(&key);
                        kept.insert(key.clone(), Kept::new(a, now));
                    }
                    Ok(a) => {
                        tracing::error!(url = %a.url, status = ?a.verified.status, "the OCSP responder does not say our certificate is good: not stapling it");
                        kept.remove(&key);
                        silent.insert(key.clone(), now.saturating_add(STAPLE_RETRY));
                    }
                    Err(OcspError::NoResponder) => {
                        silent.insert(key.clone(), now.saturating_add(time::Duration::days(365)));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "OCSP staple not refreshed");
                        silent.insert(key.clone(), now.saturating_add(STAPLE_RETRY));
                    }
                }
            }
            // Never a staple that is no longer current (refreshes that keep failing end here).
            if kept.get(&key).is_some_and(|k| !k.current(now)) {
                kept.remove(&key);
            }
            let want = kept.get(&key).map(|k| k.der.clone());
            if s.ocsp() != want {
                s.set_ocsp(want);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(STAPLE_TICK) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// How a client treats the OCSP response a server staples to its certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StapleCheck {
    /// A stapled response that verifies and says "revoked" refuses the server; an
    /// unverifiable one is ignored (logged), a missing one is fine (the default).
    #[default]
    IfPresent,
    /// The server must staple a response that verifies and says "good" (OCSP must-staple,
    /// for every server this client talks to).
    Required,
}

/// The server's chain verified as usual, then its staple as `check` says, then its
/// revocation status under `revocation` (CRL files, followed; the CA's feed, OCSP) when
/// configured.
#[derive(Debug)]
pub(crate) struct StapleVerifier {
    pub(crate) inner: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    pub(crate) roots: Vec<CertificateDer<'static>>,
    pub(crate) check: StapleCheck,
    pub(crate) revocation: Option<Arc<crate::ServerTrust>>,
    pub(crate) log: Option<Arc<crate::observe::HandshakeLog>>,
    /// Keys the server's certificate must have one of (none: any the chain check admits).
    pub(crate) pins: Vec<mtls_pki::KeyPin>,
}

/// Refuses `leaf` unless its key is one of `pins` (when there are any).
fn check_pins(leaf: &CertificateDer<'_>, pins: &[mtls_pki::KeyPin]) -> Result<(), rustls::Error> {
    if pins.is_empty() {
        return Ok(());
    }
    let spki = mtls_pki::pem_io::parse_certificate(leaf)
        .map(|c| mtls_pki::KeyPin::of_spki(c.public_key().raw))
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    if pins.contains(&spki) {
        return Ok(());
    }
    let why = format!("the server's key ({spki}) is not pinned");
    tracing::warn!(%why, "server certificate refused");
    Err(rustls::Error::InvalidCertificate(
        rustls::CertificateError::Other(rustls::OtherError(Arc::new(StapleError(why)))),
    ))
}

/// Checks `staple` about `leaf` (issued by whichever of `intermediates` and `roots` signed it)
/// at `now`.
pub(crate) fn check_staple(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &[CertificateDer<'static>],
    staple: &[u8],
    check: StapleCheck,
    now: OffsetDateTime,
) -> Result<(), rustls::Error> {
    let refuse = |why: String| {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(StapleError(why)))),
        ))
    };
    if staple.is_empty() {
        return match check {
            StapleCheck::IfPresent => Ok(()),
            StapleCheck::Required => refuse("the server stapled no OCSP response".into()),
        };
    }
    let Ok(parsed) = mtls_pki::pem_io::parse_certificate(leaf) else {
        return refuse("the server certificate does not parse".into());
    };
    // The certificate that signed the leaf, among those the server sent and the roots: not
    // merely the first one the server sent, which a revoked server could make a CA of its
    // own that vouches for it.
    let signed_leaf = |c: &[u8]| {
        mtls_pki::pem_io::parse_certificate(c)
            .is_ok_and(|c| mtls_pki::signature::issued_by(&parsed, &c))
    };
    let issuer = intermediates
        .iter()
        .map(|c| c.as_ref())
        .chain(roots.iter().map(|r| r.as_ref()))
        .find(|c| signed_leaf(c));
    let serial = Serial::from_be_bytes(parsed.raw_serial());
    let verified = match issuer.map(|i| mtls_ocsp::verify_response(staple, i, &serial, now)) {
        Some(Ok(v)) => v,
        other => {
            let why = match other {
                Some(Err(e)) => format!("the stapled OCSP response does not verify: {e}"),
                _ => "the issuer of the server certificate is unknown".into(),
            };
            return match check {
                StapleCheck::IfPresent => {
                    tracing::warn!(%why, "ignoring the server's OCSP staple");
                    Ok(())
                }
                StapleCheck::Required => refuse(why),
            };
        }
    };
    match verified.status {
        mtls_ocsp::CertStatus::Good => Ok(()),
        mtls_ocsp::CertStatus::Revoked { .. } => Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked,
        )),
        mtls_ocsp::CertStatus::Unknown => match check {
            StapleCheck::IfPresent => Ok(()),
            StapleCheck::Required => refuse("the stapled OCSP response says unknown".into()),
        },
    }
}

#[derive(Debug)]
struct StapleError(String);

impl std::fmt::Display for StapleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StapleError {}

impl rustls::client::danger::ServerCertVerifier for StapleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if let Some(log) = &self.log {
            log.server_certificate(end_entity, intermediates);
        }
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_pins(end_entity, &self.pins)?;
        let now =
            OffsetDateTime::from_unix_timestamp(i64::try_from(now.as_secs()).unwrap_or(i64::MAX))
                .map_err(|_| rustls::Error::General("clock out of range".into()))?;
        check_staple(
            end_entity,
            intermediates,
            &self.roots,
            ocsp_response,
            self.check,
            now,
        )?;
        if let Some(trust) = &self.revocation {
            // The CRL files as they are now: a replaced one counts from this connection on.
            let state = trust.current();
            match state.verify_client(end_entity, intermediates, now) {
                // Checked again while its connections stay open.
                Ok(peer) => trust.accepted(peer, &state),
                Err(r) => {
                    tracing::warn!(reason = %r, code = r.code(), "server certificate refused");
                    return Err(rustls::Error::InvalidCertificate(match r {
                        mtls_verify::Rejection::Revoked => rustls::CertificateError::Revoked,
                        other => {
                            rustls::CertificateError::Other(rustls::OtherError(Arc::new(other)))
                        }
                    }));
                }
            }
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        if let Some(log) = &self.log {
            log.server_signature("TLS 1.2", dss.scheme);
        }
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        if let Some(log) = &self.log {
            log.server_signature("TLS 1.3", dss.scheme);
        }
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::{check_staple, fetch, Kept, StapleCheck};
    use mtls_ocsp::{build_request, parse_request, CertStatus, IssuerInfo, Responder};
    use mtls_test_util::TestPki;
    use time::{Duration, OffsetDateTime};

    fn staple(pki: &TestPki, serial: &mtls_pki::Serial, status: CertStatus) -> Vec<u8> {
        let issuer = IssuerInfo::from_der(pki.intermediate.der()).unwrap();
        let req = build_request(&issuer, serial, None).unwrap();
        let req = parse_request(&req, std::slice::from_ref(&issuer)).unwrap();
        let key = mtls_pki::PrivateKey::from_pem_or_der(pki.intermediate.key().pkcs8_der(), None)
            .unwrap();
        let responder = Responder::new(&issuer, pki.intermediate.der().to_vec(), key).unwrap();
        let now = OffsetDateTime::now_utc();
        responder
            .sign(
                &req,
                &[status],
                now,
                now - Duration::minutes(1),
                Some(now + Duration::hours(1)),
            )
            .unwrap()
    }

    #[test]
    fn staples_are_checked_as_the_client_asks() {
        let pki = TestPki::new("staple");
        let server = pki.server(&["localhost"]);
        let chain = [pki.intermediate_der()];
        let roots = [pki.root_der()];
        let now = OffsetDateTime::now_utc();
        let check =
            |staple: &[u8], mode| check_staple(&server.cert.der, &chain, &roots, staple, mode, now);
        let good = staple(&pki, &server.cert.serial, CertStatus::Good);
        let revoked = staple(
            &pki,
            &server.cert.serial,
            CertStatus::Revoked {
                at: now - Duration::hours(1),
                reason: None,
            },
        );
        for mode in [StapleCheck::IfPresent, StapleCheck::Required] {
            check(&good, mode).unwrap();
            assert!(matches!(
                check(&revoked, mode),
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked
                ))
            ));
        }
        // Missing or unverifiable: fine unless required.
        check(&[], StapleCheck::IfPresent).unwrap();
        assert!(check(&[], StapleCheck::Required).is_err());
        check(b"garbage", StapleCheck::IfPresent).unwrap();
        assert!(check(b"garbage", StapleCheck::Required).is_err());
        // A good answer about another certificate is no staple for this one.
        let other = pki.server(&["other"]);
        let wrong = staple(&pki, &other.cert.serial, CertStatus::Good);
        assert!(check(&wrong, StapleCheck::Required).is_err());
        // A CA of the server's own sent first, with a "good" it signed: not the leaf's issuer.
        let evil = TestPki::new("evil");
        let forged = staple(&evil, &server.cert.serial, CertStatus::Good);
        let sent = [evil.intermediate_der(), pki.intermediate_der()];
        let check_sent =
            |staple: &[u8], mode| check_staple(&server.cert.der, &sent, &roots, staple, mode, now);
        assert!(check_sent(&forged, StapleCheck::Required).is_err());
        assert!(matches!(
            check_sent(&revoked, StapleCheck::IfPresent),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked
            ))
        ));
        check_sent(&good, StapleCheck::Required).unwrap();
    }

    /// `openssl ocsp` as a responder for `pki`'s intermediate that knows `good` as valid and
    /// `revoked` as revoked and, given no -ndays/-nmin, answers without nextUpdate. Killed on
    /// drop. (Also the responder of the OCSP checker's tests.)
    pub(crate) struct OpensslResponder {
        child: std::process::Child,
        pub(crate) url: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for OpensslResponder {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub(crate) fn openssl_responder(
        pki: &TestPki,
        good: &[&mtls_test_util::TestLeaf],
        revoked: &[&mtls_test_util::TestLeaf],
    ) -> OpensslResponder {
        use mtls_pki::pem_io::encode;
        let dir = tempfile::tempdir().unwrap();
        let inter = dir.path().join("inter.crt");
        std::fs::write(&inter, encode("CERTIFICATE", pki.intermediate.der())).unwrap();
        let key = dir.path().join("inter.key");
        std::fs::write(
            &key,
            encode("PRIVATE KEY", pki.intermediate.key().pkcs8_der()),
        )
        .unwrap();
        // index.txt: status, expiry, revocation, serial (hex as OpenSSL prints it), file, DN.
        let line = |leaf: &mtls_test_util::TestLeaf, status: &str, revoked_at: &str| {
            let parsed = mtls_pki::pem_io::parse_certificate(&leaf.cert.der).unwrap();
            let serial: String = parsed
                .raw_serial()
                .iter()
                .skip_while(|b| **b == 0)
                .map(|b| format!("{b:02X}"))
                .collect();
            format!("{status}\t491231235959Z\t{revoked_at}\t{serial}\tunknown\t/CN=c\n")
        };
        let entries: String = good
            .iter()
            .map(|l| line(l, "V", ""))
            .chain(revoked.iter().map(|l| line(l, "R", "250101000000Z")))
            .collect();
        let index = dir.path().join("index.txt");
        std::fs::write(&index, entries).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new("openssl")
            .args(["ocsp", "-port", &port.to_string(), "-index"])
            .arg(&index)
            .arg("-CA")
            .arg(&inter)
            .arg("-rsigner")
            .arg(&inter)
            .arg("-rkey")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl (the CI installs it)");
        // It says so once it listens (a connection made only to probe that would stall its
        // one-at-a-time loop); the rest of its log is drained so that it never blocks.
        let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("waiting for OCSP client connections") {
            line.clear();
            let n = std::io::BufRead::read_line(&mut log, &mut line).unwrap();
            assert!(n > 0, "openssl ocsp exited before listening");
        }
        std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
        OpensslResponder {
            child,
            url: format!("http://127.0.0.1:{port}/"),
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn a_staple_without_next_update_is_kept_only_while_clients_take_it() {
        let pki = TestPki::new("no-next");
        let server = pki.server(&["localhost"]);
        let responder = openssl_responder(&pki, &[&server], &[]);
        let client = crate::ClientBuilder::new().build_plain_http().unwrap();
        let now = OffsetDateTime::now_utc();
        let answer = fetch(
            &client,
            &server.cert.der,
            &pki.intermediate_der(),
            Some(&responder.url),
            false,
            now,
        )
        .await
        .unwrap();
        assert_eq!(answer.verified.status, CertStatus::Good);
        assert_eq!(
            answer.verified.next_update, None,
            "openssl sent a nextUpdate"
        );
        let this = answer.verified.this_update;
        let der = answer.der.clone();
        let kept = Kept::new(answer, now);
        // Served exactly as long as a client requiring a staple accepts it...
        let chain = [pki.intermediate_der()];
        let roots = [pki.root_der()];
        let client_takes = |at: OffsetDateTime| {
            check_staple(
                &server.cert.der,
                &chain,
                &roots,
                &der,
                StapleCheck::Required,
                at,
            )
            .is_ok()
        };
        let end = this + mtls_ocsp::NO_NEXT_UPDATE_MAX_AGE;
        assert_eq!(kept.expires, end);
        for at in [now, end - Duration::seconds(1)] {
            assert!(kept.current(at) && client_takes(at), "{at}");
        }
        let after = end + Duration::seconds(1);
        assert!(!kept.current(after) && !client_takes(after));
        // ...and refreshed well before that: halfway through its life.
        assert!(kept.refresh_at > now && kept.refresh_at <= this + Duration::seconds(150));
    }
}
