//! The client side of the CA API: fetch and pin the root, enroll, renew, revoke.
//!
//! First contact (`fetch_pinned_root`) is the only unauthenticated TLS exchange: it downloads
//! `/v1/roots.pem` and accepts it only if the root's SHA-256 fingerprint is the one the operator
//! pinned; every later request verifies the CA's server certificate against that root.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};
use rustls_pki_types::CertificateDer;

use crate::Error;

const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE: usize = 1 << 20;
/// A feed page holds at most 5,000 events of about 200 bytes.
const MAX_FEED_RESPONSE: usize = 8 << 20;
/// A CRL with a million entries is about 36 MB.
const MAX_CRL_RESPONSE: usize = 128 << 20;

pub use mtls_api::{FeedEvent, FeedPage, IssuedCertificate};

/// Where the CA is: `https://host[:port][/prefix]`.
#[derive(Clone, Debug)]
pub struct CaUrl {
    host: String,
    port: u16,
    prefix: String,
    original: String,
}

impl CaUrl {
    /// Parses `https://host[:port][/prefix]` (port 443 by default); other schemes are refused.
    pub fn parse(url: &str) -> Result<CaUrl, Error> {
        // Never echoed with a user name or password in it, even when it does not parse.
        let shown = match url.split_once("://") {
            Some((scheme, rest)) => {
                let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                match rest.get(..authority_end).and_then(|a| a.rfind('@')) {
                    Some(at) => format!("{scheme}://…@{}", rest.get(at + 1..).unwrap_or("")),
                    None => url.to_string(),
                }
            }
            None => url.to_string(),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|_| Error::Config(format!("CA URL {shown:?}: not a URL")))?;
        // The client authenticates with its certificate: a user name or password in the URL
        // would never be sent, and would be printed in every message naming the CA.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(Error::Config(
                "CA URL: a user name or password in it is not used (the client certificate authenticates): remove it".into(),
            ));
        }
        let bad = |m: &str| Error::Config(format!("CA URL {url:?}: {m}"));
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

/// An HTTPS client for the CA API (built by [`crate::ClientBuilder`]).
#[derive(Clone)]
pub struct CaClient {
    url: CaUrl,
    http: crate::Client,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaClient({})", self.url)
    }
}

/// An error with its causes, on one line (reqwest's own message is only the outermost one).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Many errors already print their cause: say it once.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
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
        let mut b = crate::ClientBuilder::new()
            .ca_certificates(vec![root.clone()])
            .timeout(TIMEOUT)
            .http1_only();
        if let Some(c) = credential {
            b = b.identity(c.clone());
        }
        Ok(CaClient {
            url,
            http: b.build()?,
        })
    }

    /// A client from `builder` (its CAs, identity files and timeout; HTTP/1.1 only), for
    /// callers whose client identity follows its files, like a gateway following the
    /// revocation feed.
    pub fn from_builder(url: CaUrl, builder: crate::ClientBuilder) -> Result<CaClient, Error> {
        Ok(CaClient {
            url,
            http: builder.http1_only().build()?,
        })
    }

    /// The CA's URL.
    pub fn url(&self) -> &CaUrl {
        &self.url
    }

    /// Downloads the CA's roots over an unauthenticated connection and returns the one whose
    /// SHA-256 fingerprint is `want`.
    pub async fn fetch_pinned_root(
        url: &CaUrl,
        want: &mtls_pki::Fingerprint,
    ) -> Result<CertificateDer<'static>, Error> {
        let probe = CaClient {
            url: url.clone(),
            http: crate::ClientBuilder::new()
                .accept_any_server_for_pinning()
                .timeout(TIMEOUT)
                .http1_only()
                .build()?,
        };
        let (status, headers, body) = probe.call(Method::GET, "/v1/roots.pem", None).await?;
        if status != StatusCode::OK {
            return Err(refused(status, &headers, &body));
        }
        let roots = mtls_pki::pem_io::certificates(&body)
            .map_err(|e| Error::Protocol(format!("roots.pem: {e}")))?;
        let mut found = Vec::new();
        for r in roots {
            let fp = mtls_pki::Fingerprint::of(&r);
            if fp == *want {
                return Ok(r);
            }
            found.push(fp.to_string());
        }
        Err(Error::FingerprintMismatch {
            expected: want.to_string(),
            found: found.join(", "),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), Error> {
        self.call_limited(method, path, body, MAX_RESPONSE).await
    }

    async fn call_limited(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), Error> {
        let url = &self.url;
        let host = if url.host.contains(':') {
            format!("[{}]", url.host)
        } else {
            url.host.clone()
        };
        let target = format!("https://{host}:{}{}{path}", url.port, url.prefix);
        let mut req = self.http.request(method, &target);
        if let Some(b) = body {
            req = req
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport(url, error_chain(&e)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = crate::body_limited(resp, limit)
            .await
            .map_err(|e| transport(url, e))?;
        Ok((status, headers, body))
    }

    /// `GET /v1/revocations?after=…&wait=…`: the revocations after `after`, waiting up to
    /// `wait` for one (the client's timeout must be longer).
    pub async fn revocations(&self, after: i64, wait: Duration) -> Result<FeedPage, Error> {
        let path = format!("/v1/revocations?after={after}&wait={}ms", wait.as_millis());
        let (status, headers, body) = self
            .call_limited(Method::GET, &path, None, MAX_FEED_RESPONSE)
            .await?;
        if status != StatusCode::OK {
            return Err(refused(status, &headers, &body));
        }
        serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("revocation feed answer: {e}")))
    }

    /// `GET /v1/crl` (DER) with the feed position it covers (the `Mtls-Revocation-Seq`
    /// header, when the CA sends one).
    pub async fn crl(&self) -> Result<(Bytes, Option<i64>), Error> {
        let (status, headers, body) = self
            .call_limited(Method::GET, "/v1/crl", None, MAX_CRL_RESPONSE)
            .await?;
        if status != StatusCode::OK {
            return Err(refused(status, &headers, &body));
        }
        let seq = headers
            .get(mtls_verify::FEED_POSITION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok((body, seq))
    }

    async fn post_json(&self, path: &str, body: &impl serde::Serialize) -> Result<Bytes, Error> {
        let body = serde_json::to_vec(body).map_err(|e| Error::Protocol(e.to_string()))?;
        let (status, headers, resp) = self.call(Method::POST, path, Some(body)).await?;
        if !status.is_success() {
            return Err(refused(status, &headers, &resp));
        }
        Ok(resp)
    }

    /// `POST /v1/sign`.
    pub async fn enroll(&self, token: &str, csr_pem: &str) -> Result<IssuedCertificate, Error> {
        let request = mtls_api::SignRequest {
            token: token.to_string(),
            csr: csr_pem.to_string(),
        };
        issued(&self.post_json("/v1/sign", &request).await?)
    }

    /// `POST /v1/renew` (the client must have been built with the current credential).
    pub async fn renew(&self, csr_pem: Option<&str>) -> Result<IssuedCertificate, Error> {
        let request = mtls_api::RenewRequest {
            csr: csr_pem.map(str::to_string),
        };
        issued(&self.post_json("/v1/renew", &request).await?)
    }

    /// `POST /v1/revoke`: own certificate when `serial` is None.
    pub async fn revoke(
        &self,
        serial: Option<&str>,
        reason: Option<&str>,
    ) -> Result<serde_json::Value, Error> {
        let request = mtls_api::RevokeRequest {
            serial: serial.map(str::to_string),
            reason: reason.map(str::to_string),
        };
        let resp = self.post_json("/v1/revoke", &request).await?;
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
        let request = mtls_api::TokenRequest {
            name: name.to_string(),
            sans: sans.to_vec(),
            profile: profile.to_string(),
            ttl: ttl.to_string(),
        };
        let resp = self.post_json("/v1/tokens", &request).await?;
        let created: mtls_api::TokenCreated = serde_json::from_slice(&resp)
            .map_err(|e| Error::Protocol(format!("token answer: {e}")))?;
        Ok(created.token)
    }
}

fn issued(body: &[u8]) -> Result<IssuedCertificate, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Protocol(format!("certificate answer: {e}")))
}

/// `Retry-After` as a wait from `now`, in either form of RFC 9110 §10.2.3: delta-seconds (what
/// our CA sends) or an HTTP date (what a proxy in front of it may send; one already past means
/// no wait). A value that is neither says nothing: `None`, as without the header.
fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits, so a parse failure is an overflow: a very long wait (capped by the
        // caller).
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn refused(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Error {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        v.as_ref()
            .and_then(|v| v.get("error"))
            .and_then(|e| e.get(k))
            .and_then(|s| s.as_str())
            .map(str::to_string)
    };
    // Printed on a terminal: the answer may come from a peer not yet trusted (enrollment's
    // first contact), so control characters (escape sequences) are shown escaped.
    let printable = |s: String| -> String {
        s.chars()
            .flat_map(|c| {
                let escaped: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect()
    };
    Error::Refused {
        status: status.as_u16(),
        code: printable(field("code").unwrap_or_else(|| "HTTP".into())),
        message: printable(
            field("message")
                .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect()),
        ),
        retry_after: retry_after(headers, SystemTime::now()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_printed_without_control_characters() {
        let e = refused(
            StatusCode::FORBIDDEN,
            &http::HeaderMap::new(),
            br#"{"error":{"code":"X[2J","message":"bad]0;owned news"}}"#,
        );
        let text = e.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains("\\u{1b}]0;owned"), "{text}");
        let e = refused(
            StatusCode::BAD_GATEWAY,
            &http::HeaderMap::new(),
            b"<html>[31m",
        );
        assert!(!e.to_string().chars().any(char::is_control));
    }

    #[test]
    fn credentials_in_a_ca_url_are_refused_without_being_echoed() {
        let e = CaUrl::parse("https://admin:hunter2@ca.example:9443").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("user name or password"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        // A password the URL parser cannot read is not echoed either.
        let e = CaUrl::parse("https://admin:hun ter{2@ca.example:9443/x").unwrap_err();
        let text = e.to_string();
        assert!(!text.contains("hun") && !text.contains("ter"), "{text}");
    }

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
        let none = http::HeaderMap::new();
        let e = refused(
            StatusCode::FORBIDDEN,
            &none,
            br#"{"error":{"code":"CERT_EXPIRED","message":"enroll again"}}"#,
        );
        assert!(
            matches!(e, Error::Refused { status: 403, ref code, retry_after: None, .. } if code == "CERT_EXPIRED")
        );
        // A body that is not ours still says something.
        let e = refused(StatusCode::BAD_GATEWAY, &none, b"<html>proxy</html>");
        assert!(
            matches!(e, Error::Refused { status: 502, ref code, ref message, .. } if code == "HTTP" && message.contains("proxy"))
        );
    }

    /// The CA's `Retry-After` comes with the refusal, in seconds or as an HTTP date (RFC 9110
    /// §10.2.3, all three date formats a recipient must accept); garbage is left out.
    #[test]
    fn refusals_keep_retry_after() {
        let body = br#"{"error":{"code":"RATE_LIMITED","message":"later"}}"#;
        let with = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static(v));
            refused(StatusCode::TOO_MANY_REQUESTS, &h, body)
        };
        assert!(matches!(
            with("1800"),
            Error::Refused { status: 429, retry_after: Some(d), .. } if d == Duration::from_secs(1800)
        ));
        // A date long past (the clock is read by `refused`): no wait, but a wait was asked.
        assert!(matches!(
            with("Wed, 21 Oct 2015 07:28:00 GMT"),
            Error::Refused { retry_after: Some(d), .. } if d == Duration::ZERO
        ));
        for ignored in [
            "-5",
            "soon",
            "",
            "1.5",
            "+30",
            "Wed, 21 Oct 2015 25:28:00 GMT",
        ] {
            assert!(
                matches!(
                    with(ignored),
                    Error::Refused {
                        retry_after: None,
                        ..
                    }
                ),
                "{ignored}"
            );
        }
    }

    /// Both forms of `Retry-After` against a fixed clock: seconds as given (an overflowing
    /// number as a very long wait), a date as the time until it, a past date as no wait.
    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let at = |v: &str, now: SystemTime| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::RETRY_AFTER, v.parse().unwrap());
            retry_after(&h, now)
        };
        // Wed, 21 Oct 2015 07:28:00 GMT
        let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let before = date - Duration::from_secs(90);
        for form in [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Wednesday, 21-Oct-15 07:28:00 GMT",
            "Wed Oct 21 07:28:00 2015",
        ] {
            assert_eq!(at(form, before), Some(Duration::from_secs(90)), "{form}");
            assert_eq!(at(form, date), Some(Duration::ZERO), "{form}");
            assert_eq!(
                at(form, date + Duration::from_secs(3600)),
                Some(Duration::ZERO),
                "{form}"
            );
        }
        assert_eq!(at(" 120 ", date), Some(Duration::from_secs(120)));
        assert_eq!(at("0", date), Some(Duration::ZERO));
        assert_eq!(
            at("99999999999999999999999", date),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(at("tomorrow", date), None);
        assert_eq!(at("21 Oct 2015", date), None);
        assert_eq!(retry_after(&http::HeaderMap::new(), date), None);
    }
}
