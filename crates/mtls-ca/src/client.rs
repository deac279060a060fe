//! The client side of the CA API: fetch and pin the root, enroll, renew, revoke.
//!
//! First contact (`fetch_pinned_root`) is the only unauthenticated TLS exchange: it downloads
//! `/v1/roots.pem` and accepts it only if the root's SHA-256 fingerprint is the one the operator
//! pinned; every later request verifies the CA's server certificate against that root.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::Error;

const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE: usize = 1 << 20;

/// A certificate returned by the CA.
#[derive(Clone, Debug, Deserialize)]
pub struct Issued {
    pub serial: String,
    pub certificate: String,
    pub chain: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// Where the CA is: `https://host[:port][/prefix]`.
#[derive(Clone, Debug)]
pub struct CaUrl {
    host: String,
    port: u16,
    prefix: String,
    original: String,
}

impl CaUrl {
    pub fn parse(url: &str) -> Result<CaUrl, Error> {
        let bad = |m: &str| Error::Config(format!("CA URL {url:?}: {m}"));
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("must start with https://"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(CaUrl {
            host,
            port: uri.port_u16().unwrap_or(443),
            prefix: uri.path().trim_end_matches('/').to_string(),
            original: url.to_string(),
        })
    }
}

impl std::fmt::Display for CaUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.original)
    }
}

/// Accepts any server certificate: used only to fetch the roots that are then pinned.
#[derive(Debug)]
struct AcceptAnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A connection-per-request HTTPS client for the CA API.
#[derive(Clone)]
pub struct CaClient {
    url: CaUrl,
    tls: Arc<ClientConfig>,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaClient({})", self.url)
    }
}

fn transport(url: &CaUrl, detail: impl std::fmt::Display) -> Error {
    Error::Transport {
        url: url.to_string(),
        detail: detail.to_string(),
    }
}

impl CaClient {
    /// A client trusting `root` for the CA's server certificate, presenting `credential` (the
    /// current certificate, for renewal and revocation) when given.
    pub fn new(
        url: CaUrl,
        root: &CertificateDer<'static>,
        credential: Option<&mtls_tls::Credential>,
    ) -> Result<CaClient, Error> {
        let tls = mtls_tls::client_config(std::slice::from_ref(root), credential, &[b"http/1.1"])?;
        Ok(CaClient {
            url,
            tls: Arc::new(tls),
        })
    }

    /// Downloads the CA's roots over an unauthenticated connection and returns the one whose
    /// SHA-256 fingerprint is `fingerprint` (hex, colons and case ignored).
    pub async fn fetch_pinned_root(
        url: &CaUrl,
        fingerprint: &str,
    ) -> Result<CertificateDer<'static>, Error> {
        let provider = mtls_tls::provider();
        let mut tls = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| transport(url, e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let probe = CaClient {
            url: url.clone(),
            tls: Arc::new(tls),
        };
        let (status, body) = probe.call(Method::GET, "/v1/roots.pem", None).await?;
        if status != StatusCode::OK {
            return Err(refused(status, &body));
        }
        let roots = mtls_pki::pem_io::certificates(&body)
            .map_err(|e| Error::Protocol(format!("roots.pem: {e}")))?;
        let want: String = fingerprint
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        let mut found = Vec::new();
        for r in roots {
            let fp = mtls_pki::inspect::sha256_hex(&r);
            if fp == want {
                return Ok(r);
            }
            found.push(fp);
        }
        Err(Error::FingerprintMismatch {
            expected: want,
            found: found.join(", "),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let url = &self.url;
        let fut = async {
            let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
                .await
                .map_err(|e| transport(url, e))?;
            let name = ServerName::try_from(url.host.clone()).map_err(|e| transport(url, e))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| transport(url, e))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| transport(url, e))?;
            tokio::spawn(conn);
            let authority = if url.port == 443 {
                url.host.clone()
            } else {
                format!("{}:{}", url.host, url.port)
            };
            let mut req = Request::builder()
                .method(method)
                .uri(format!("{}{path}", url.prefix))
                .header(http::header::HOST, authority)
                .header(http::header::USER_AGENT, "mtls");
            if body.is_some() {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| transport(url, e))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| transport(url, e))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| transport(url, e))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .map_err(|_| transport(url, "timed out"))?
    }

    async fn post_json(&self, path: &str, body: serde_json::Value) -> Result<Bytes, Error> {
        let (status, resp) = self
            .call(Method::POST, path, Some(body.to_string().into_bytes()))
            .await?;
        if !status.is_success() {
            return Err(refused(status, &resp));
        }
        Ok(resp)
    }

    /// `POST /v1/sign`.
    pub async fn enroll(&self, token: &str, csr_pem: &str) -> Result<Issued, Error> {
        let body = self
            .post_json(
                "/v1/sign",
                serde_json::json!({"token": token, "csr": csr_pem}),
            )
            .await?;
        issued(&body)
    }

    /// `POST /v1/renew` (the client must have been built with the current credential).
    pub async fn renew(&self, csr_pem: Option<&str>) -> Result<Issued, Error> {
        let body = match csr_pem {
            Some(c) => serde_json::json!({"csr": c}),
            None => serde_json::json!({}),
        };
        issued(&self.post_json("/v1/renew", body).await?)
    }

    /// `POST /v1/revoke`: own certificate when `serial` is None.
    pub async fn revoke(
        &self,
        serial: Option<&str>,
        reason: Option<&str>,
    ) -> Result<serde_json::Value, Error> {
        let mut body = serde_json::Map::new();
        if let Some(s) = serial {
            body.insert("serial".into(), s.into());
        }
        if let Some(r) = reason {
            body.insert("reason".into(), r.into());
        }
        let resp = self
            .post_json("/v1/revoke", serde_json::Value::Object(body))
            .await?;
        serde_json::from_slice(&resp).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// `POST /v1/tokens` (administrators).
    pub async fn create_token(
        &self,
        name: &str,
        sans: &[String],
        profile: &str,
        ttl: &str,
    ) -> Result<String, Error> {
        let resp = self
            .post_json(
                "/v1/tokens",
                serde_json::json!({"name": name, "sans": sans, "profile": profile, "ttl": ttl}),
            )
            .await?;
        let v: serde_json::Value =
            serde_json::from_slice(&resp).map_err(|e| Error::Protocol(e.to_string()))?;
        v.get("token")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::Protocol("no token in the answer".into()))
    }
}

fn issued(body: &[u8]) -> Result<Issued, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Protocol(format!("certificate answer: {e}")))
}

fn refused(status: StatusCode, body: &[u8]) -> Error {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        v.as_ref()
            .and_then(|v| v.get("error"))
            .and_then(|e| e.get(k))
            .and_then(|s| s.as_str())
            .map(str::to_string)
    };
    Error::Refused {
        status: status.as_u16(),
        code: field("code").unwrap_or_else(|| "HTTP".into()),
        message: field("message")
            .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ca_urls() {
        let u = CaUrl::parse("https://ca.example.com/pki/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("ca.example.com", 443, "/pki")
        );
        let u = CaUrl::parse("https://[::1]:9443").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("::1", 9443, "")
        );
        for bad in [
            "http://ca.example.com",
            "ca.example.com",
            "https://",
            "",
            "https://a b",
        ] {
            assert!(CaUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_keep_the_seed_error_shape() {
        let e = refused(
            StatusCode::FORBIDDEN,
            br#"{"error":{"code":"CERT_EXPIRED","message":"enroll again"}}"#,
        );
        assert!(
            matches!(e, Error::Refused { status: 403, ref code, .. } if code == "CERT_EXPIRED")
        );
        // A body that is not ours still says something.
        let e = refused(StatusCode::BAD_GATEWAY, b"<html>proxy</html>");
        assert!(
            matches!(e, Error::Refused { status: 502, ref code, ref message } if code == "HTTP" && message.contains("proxy"))
        );
    }
}
