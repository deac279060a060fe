//! Identity headers: stripping what clients send, encoding what we forward.
//!
//! Every value we emit is built from characters that cannot end a header line or split a
//! structured value: quoted strings escape `"` and `\`, and any byte outside printable ASCII is
//! percent-encoded, so a certificate subject containing quotes, commas, semicolons or CR/LF
//! cannot inject a header or a field.

use base64::Engine as _;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};
use mtls_verify::VerifiedPeer;

/// Identity headers removed from every request before ours are added: ours, and those other
/// TLS terminators set (nginx and Apache configurations, IIS/ARR, Traefik), which an upstream
/// moved behind mtls may still read.
pub const IDENTITY_HEADERS: &[&str] = &[
    "x-forwarded-client-cert",
    "client-cert",
    "client-cert-chain",
    "x-client-cert",
    "x-client-cert-chain",
    "x-ssl-client-cert",
    "x-ssl-client-verify",
    "x-ssl-client-s-dn",
    "x-ssl-client-i-dn",
    "x-ssl-client-dn",
    "x-ssl-client-serial",
    "x-ssl-client-fingerprint",
    "ssl-client-cert",
    "ssl-client-verify",
    "x-client-verify",
    "x-client-dn",
    "x-client-s-dn",
    "x-arr-clientcert",
];

/// Forwarding headers a client could use to pose as another address, host, scheme or path: the
/// gateway is the edge (it terminates the client's TLS), so it sets `X-Forwarded-For` and
/// `X-Forwarded-Proto` itself and forwards none of these from the client. The path overrides
/// (`X-Original-URL` and the like, honoured by IIS URL Rewrite, older Symfony and Zend,
/// Spring's ForwardedHeaderFilter, forward-auth sidecars) would let a request checked against
/// one route's policy be served as another path.
/// (Every `X-Forwarded-*` goes too: see [`FORWARDING_PREFIXES`].)
pub const FORWARDING_HEADERS: &[&str] = &[
    "x-real-ip",
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "front-end-https",
    "x-url-scheme",
];

/// Prefixes of forwarding and identity header names: every `X-Forwarded-*` (`-For`, `-Proto`,
/// `-Host`, `-Port`, `-Uri`, `-Prefix`, `-Ssl`, `-Scheme`, `-Server`, …) and the mTLS headers
/// of AWS load balancers (`X-Amzn-Mtls-Clientcert*`).
pub const FORWARDING_PREFIXES: &[&str] = &["x-forwarded-", "x-amzn-mtls-"];

/// Whether `name` (lower case, dashed) is one the client may not send upstream.
fn reserved(name: &str) -> bool {
    IDENTITY_HEADERS.contains(&name)
        || FORWARDING_HEADERS.contains(&name)
        || FORWARDING_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Hop-by-hop headers (RFC 9110 7.6.1) that a proxy must not forward; `HTTP2-Settings`
/// belongs to an h2c upgrade of this hop (RFC 7540 3.2.1), which the gateway never forwards.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "http2-settings",
];

/// Removes identity and forwarding headers (any case, every duplicate, underscore spellings),
/// hop-by-hop headers and every header named in `Connection`. `keep_upgrade` keeps `Upgrade`/`Connection: upgrade` for WebSockets.
pub fn strip(headers: &mut HeaderMap, extra: &[HeaderName], keep_upgrade: bool) {
    // One pass over the headers present (a handful) rather than a hashed lookup for each of
    // the ~20 names that could be: this runs on every request and every response.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        // `Connection: host` would make the upstream see no Host (then the gateway's own
        // authority for the upstream), after the client's was checked against the TLS name.
        .filter(|n| *n != http::header::HOST)
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let name = n.as_str();
            if *n == http::header::UPGRADE {
                return !keep_upgrade;
            }
            HOP_BY_HOP.contains(&name)
                || reserved(name)
                || extra.contains(n)
                || named.contains(n)
                // `x_forwarded_client_cert` reaches CGI-style upstreams (WSGI, Rack, PHP) as
                // the same variable as our `x-forwarded-client-cert`: underscore spellings go
                // too.
                || (name.contains('_') && {
                    let dashed = name.replace('_', "-");
                    reserved(&dashed) || extra.iter().any(|h| h.as_str() == dashed)
                })
        })
        .cloned()
        .collect();
    for n in doomed {
        headers.remove(n);
    }
}

/// Escapes a value for a quoted string and keeps it to printable ASCII.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for b in value.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out.push('"');
    out
}

/// Envoy-style `X-Forwarded-Client-Cert`: `Hash=…;Subject="…";URI=…;DNS=…`, the subject in
/// RFC 4514 form (as Envoy writes it: most specific first, special characters escaped), so
/// that an upstream splitting it at commas cannot be handed another attribute by a value
/// (`O=x\, CN=admin`).
pub fn xfcc(peer: &VerifiedPeer) -> String {
    let subject = mtls_pki::pem_io::parse_certificate(peer.certificate_der())
        .map(|c| mtls_pki::dn::to_rfc4514(c.subject()))
        .unwrap_or_default();
    let mut parts = vec![
        format!("Hash={}", peer.fingerprint()),
        format!("Subject={}", quote(&subject)),
    ];
    for u in peer.uris() {
        parts.push(format!("URI={}", quote(u)));
    }
    for d in peer.dns_names() {
        parts.push(format!("DNS={}", quote(d)));
    }
    parts.join(";")
}

/// RFC 9440 `Client-Cert`: the DER as a structured-field byte sequence.
pub fn client_cert(peer: &VerifiedPeer) -> String {
    format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(peer.certificate_der())
    )
}

/// The identity headers for a verified peer, encoded once per certificate, and that
/// certificate's count of requests in flight upstream (`max_upstream_requests_per_client`):
/// both shared by all its connections (see [`IdentityHeaders::shared`]).
#[derive(Debug)]
pub struct IdentityHeaders {
    pub xfcc: HeaderValue,
    pub client_cert: HeaderValue,
    in_flight: std::sync::atomic::AtomicUsize,
}

/// One request in flight upstream for a client certificate (see
/// [`IdentityHeaders::take_slot`]); given back when dropped.
#[derive(Debug)]
pub struct ClientSlot(std::sync::Arc<IdentityHeaders>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// How many certificates' entries are kept before those no connection uses are dropped.
const SHARED_CAPACITY: usize = 4096;

static SHARED: std::sync::Mutex<
    Option<std::collections::HashMap<mtls_pki::Fingerprint, std::sync::Weak<IdentityHeaders>>>,
> = std::sync::Mutex::new(None);

/// Drops the entries no connection uses. Only those: a live one holds its certificate's count
/// of requests in flight, which a fresh entry would restart at zero (the per-client limit
/// would become per connection). What stays is bounded by the connections.
fn drop_unused<K, V>(map: &mut std::collections::HashMap<K, std::sync::Weak<V>>) {
    map.retain(|_, w| w.strong_count() > 0);
}

impl IdentityHeaders {
    /// The headers of `peer`'s certificate, encoded once per certificate and shared by all its
    /// connections (each would otherwise hold its own copy of the encoded certificate).
    pub fn shared(peer: &std::sync::Arc<VerifiedPeer>) -> Option<std::sync::Arc<Self>> {
        let key = *peer.fingerprint();
        let Ok(mut guard) = SHARED.lock() else {
            return Self::new(peer).map(std::sync::Arc::new);
        };
        let map = guard.get_or_insert_with(Default::default);
        if let Some(h) = map.get(&key).and_then(std::sync::Weak::upgrade) {
            return Some(h);
        }
        let headers = std::sync::Arc::new(Self::new(peer)?);
        if map.len() >= SHARED_CAPACITY {
            drop_unused(map);
        }
        map.insert(key, std::sync::Arc::downgrade(&headers));
        Some(headers)
    }

    pub fn new(peer: &VerifiedPeer) -> Option<Self> {
        Some(IdentityHeaders {
            xfcc: HeaderValue::from_str(&xfcc(peer)).ok()?,
            client_cert: HeaderValue::from_str(&client_cert(peer)).ok()?,
            in_flight: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// A slot for one more request of this certificate in flight upstream, unless it has
    /// `max` already.
    pub fn take_slot(self: &std::sync::Arc<Self>, max: usize) -> Option<ClientSlot> {
        use std::sync::atomic::Ordering;
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientSlot(self.clone()))
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert("x-forwarded-client-cert", self.xfcc.clone());
        headers.insert("client-cert", self.client_cert.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full cache drops what no connection uses and keeps every live entry (with its count
    /// of requests in flight), however many there are.
    #[test]
    fn a_full_cache_keeps_live_entries() {
        let live: Vec<std::sync::Arc<usize>> = (0..3).map(std::sync::Arc::new).collect();
        let mut map: std::collections::HashMap<usize, std::sync::Weak<usize>> = live
            .iter()
            .map(|a| (**a, std::sync::Arc::downgrade(a)))
            .collect();
        let gone = std::sync::Arc::new(9);
        map.insert(9, std::sync::Arc::downgrade(&gone));
        drop(gone);
        drop_unused(&mut map);
        let mut kept: Vec<usize> = map.keys().copied().collect();
        kept.sort_unstable();
        assert_eq!(kept, vec![0, 1, 2]);
    }

    #[test]
    fn quoting_cannot_break_out() {
        let q = quote("CN=evil\",DNS=x;URI=y\r\nX-Injected: 1\\");
        assert!(!q.contains('\r') && !q.contains('\n'));
        assert!(HeaderValue::from_str(&q).is_ok());
        assert_eq!(q, "\"CN=evil\\\",DNS=x;URI=y%0D%0AX-Injected: 1\\\\\"");
        assert_eq!(quote("Ünï"), "\"%C3%9Cn%C3%AF\"");
    }

    #[test]
    fn strip_removes_every_variant() {
        let mut h = HeaderMap::new();
        h.append("X-Forwarded-Client-Cert", HeaderValue::from_static("a"));
        h.append("x-forwarded-client-cert", HeaderValue::from_static("b"));
        h.append("CLIENT-CERT", HeaderValue::from_static("c"));
        h.append("client-cert-chain", HeaderValue::from_static("c"));
        h.append("x-user", HeaderValue::from_static("admin"));
        h.append("connection", HeaderValue::from_static("close, X-User"));
        h.append("x-custom-id", HeaderValue::from_static("z"));
        // Underscore spellings, which CGI-style upstreams read as the same variable.
        h.append("x_forwarded_client_cert", HeaderValue::from_static("d"));
        h.append("Client_Cert", HeaderValue::from_static("e"));
        h.append("x_custom_id", HeaderValue::from_static("f"));
        h.append("accept", HeaderValue::from_static("*/*"));
        // Other terminators' identity headers, every X-Forwarded-*, client-address headers.
        for name in [
            "x-forwarded-scheme",
            "x-forwarded-ssl",
            "x-forwarded-anything",
            "x_forwarded_server",
            "x-ssl-client-s-dn",
            "x-arr-clientcert",
            "x-amzn-mtls-clientcert-leaf",
            "true-client-ip",
            "cf-connecting-ip",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("forged"),
            );
        }
        strip(&mut h, &[HeaderName::from_static("x-custom-id")], false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
        // `Connection: host` does not take the checked Host away.
        let mut h = HeaderMap::new();
        h.append("host", HeaderValue::from_static("localhost"));
        h.append("connection", HeaderValue::from_static("host, keep-alive"));
        strip(&mut h, &[], false);
        assert_eq!(h.get("host").unwrap(), "localhost");
    }
}
