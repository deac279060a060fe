//! The one `host[:port]` splitting of mtls: a `Host` header, `mtls tunnel --target`, a
//! `--listen` address. It splits at the brackets of an IPv6 literal or at the last colon and
//! refuses what has no single reading (an IPv6 address without brackets: where would its port
//! start?). Which hosts and ports a caller accepts (a TLS name's characters, a required port)
//! is the caller's policy, applied on top.

/// A host and its optional port, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// The host, without the brackets of an IPv6 literal.
    pub host: &'a str,
    /// The text after the colon, as given (may be empty: RFC 3986 allows `host:`).
    pub port: Option<&'a str>,
    /// Whether the host was written in brackets (`[::1]`).
    pub bracketed: bool,
}

/// Why a `host[:port]` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostPortError {
    /// Nothing before the port, or brackets inside the host.
    #[error("no host")]
    NoHost,
    /// A `[` without its `]`.
    #[error("an unclosed bracket")]
    Unclosed,
    /// Something other than `:PORT` after `]`.
    #[error("text after the bracketed address that is not :PORT")]
    AfterBracket,
    /// Colons in a host without brackets.
    #[error("an IPv6 address needs brackets")]
    Unbracketed,
}

/// Splits `host[:port]`: `localhost`, `db.example.com:5432`, `[::1]:443`, `[::1]`.
pub fn split(s: &str) -> Result<HostPort<'_>, HostPortError> {
    let (host, port, bracketed) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(HostPortError::Unclosed)?;
        let port = match after {
            "" => None,
            a => Some(a.strip_prefix(':').ok_or(HostPortError::AfterBracket)?),
        };
        (host, port, true)
    } else {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if host.contains(':') {
            return Err(HostPortError::Unbracketed);
        }
        (host, port, false)
    };
    if host.is_empty() || host.contains(['[', ']']) {
        return Err(HostPortError::NoHost);
    }
    Ok(HostPort {
        host,
        port,
        bracketed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_brackets_or_the_last_colon() {
        let hp = |host, port, bracketed| {
            Ok(HostPort {
                host,
                port,
                bracketed,
            })
        };
        assert_eq!(split("localhost"), hp("localhost", None, false));
        assert_eq!(split("localhost:"), hp("localhost", Some(""), false));
        assert_eq!(split("a.example:443"), hp("a.example", Some("443"), false));
        assert_eq!(split("[::1]"), hp("::1", None, true));
        assert_eq!(split("[::1]:443"), hp("::1", Some("443"), true));
        assert_eq!(split("a:443,b"), hp("a", Some("443,b"), false));
        assert_eq!(split("::1:443"), Err(HostPortError::Unbracketed));
        assert_eq!(split("[::1"), Err(HostPortError::Unclosed));
        assert_eq!(split("[::1]443"), Err(HostPortError::AfterBracket));
        assert_eq!(split("[a]b"), Err(HostPortError::AfterBracket));
        for no_host in ["", ":443", "[]:443", "[[::1]]:443"] {
            assert!(split(no_host).is_err(), "{no_host}");
        }
    }
}
