//! PROXY protocol v2 header with the verified identity in TLVs.

use std::net::SocketAddr;

use mtls_verify::VerifiedPeer;

const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
/// Custom TLVs (0xE0–0xEF are reserved for applications): SHA-256 fingerprint, first URI SAN.
pub const PP2_TYPE_MTLS_FINGERPRINT: u8 = 0xE0;
pub const PP2_TYPE_MTLS_URI: u8 = 0xE1;

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&value[..usize::from(len)]);
}

/// Builds a v2 PROXY header for a TCP connection from `src` to `dst`.
pub fn v2_header(src: SocketAddr, dst: SocketAddr, peer: &VerifiedPeer) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
            0x11
        }
        _ => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(v) => v.ip().to_ipv6_mapped(),
                SocketAddr::V6(v) => *v.ip(),
            };
            body.extend_from_slice(&v6(src).octets());
            body.extend_from_slice(&v6(dst).octets());
            body.extend_from_slice(&src.port().to_be_bytes());
            body.extend_from_slice(&dst.port().to_be_bytes());
            0x21
        }
    };
    let mut ssl = vec![PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0, 0, 0, 0];
    tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, b"TLS");
    if let Some(cn) = peer.common_name() {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_CN, cn.as_bytes());
    }
    tlv(&mut body, PP2_TYPE_SSL, &ssl);
    tlv(
        &mut body,
        PP2_TYPE_MTLS_FINGERPRINT,
        peer.fingerprint().to_string().as_bytes(),
    );
    if let Some(u) = peer.uris().first() {
        tlv(&mut body, PP2_TYPE_MTLS_URI, u.as_bytes());
    }
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21);
    out.push(family);
    out.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&body);
    out
}
