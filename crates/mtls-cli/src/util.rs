//! Small parsing and output helpers shared by the commands.

use std::io::Write;

use anyhow::{anyhow, Result};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::UsageError;

/// Parses a duration flag with a unit (`30d`, `12h`, `45m`, `2w`): the one syntax of every flag
/// and configuration file ([`mtls_serve::duration`]). A clap value parser, so a bare number is a
/// usage error before anything else happens.
pub fn duration_arg(s: &str) -> std::result::Result<Duration, String> {
    mtls_serve::duration::parse_time(s).map_err(|e| e.to_string())
}

/// A revocation reason flag (`keyCompromise`, `key-compromise`, …).
pub fn reason_arg(s: &str) -> std::result::Result<mtls_pki::revocation::RevocationReason, String> {
    s.parse().map_err(|e: mtls_pki::Error| e.to_string())
}

/// [`duration_arg`] for `std::time::Duration` flags.
pub fn std_duration_arg(s: &str) -> std::result::Result<std::time::Duration, String> {
    mtls_serve::duration::parse(s).map_err(|e| e.to_string())
}

/// Splits `HOST:PORT` (`db.example.com:5432`, `127.0.0.1:5432`, `[::1]:5432`) into the host,
/// without the brackets an IPv6 address needs, and the port, which the command line requires
/// (the splitting is [`mtls_serve::hostport::split`]'s, as for the gateway's `Host`). An IPv6
/// address without brackets (`::1:5432`) is refused: where its port starts is a guess. The
/// error says what is wrong; the caller adds the forms it accepts.
pub fn host_port(s: &str) -> std::result::Result<(String, u16), String> {
    match s.parse::<std::net::SocketAddr>() {
        // A zone (`[fe80::1%2]:22`) stays with the address: the resolver takes `fe80::1%2`.
        Ok(std::net::SocketAddr::V6(a)) if a.scope_id() != 0 => {
            return Ok((format!("{}%{}", a.ip(), a.scope_id()), a.port()))
        }
        Ok(a) => return Ok((a.ip().to_string(), a.port())),
        Err(_) => {}
    }
    let hp = mtls_serve::hostport::split(s).map_err(|e| format!("{s:?}: {e}"))?;
    let Some(port) = hp.port else {
        return Err(format!("no port in {s:?}"));
    };
    let host = hp.host;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("invalid port {port:?}"))?;
    Ok((host.to_string(), port))
}

/// Parses a listening address: `IP:PORT` (`127.0.0.1:8443`, `[::1]:8443`) or `HOST:PORT`
/// (`localhost:8443`, resolved now; the first address is used). A clap value parser.
pub fn listen_arg(s: &str) -> std::result::Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let form = "use IP:PORT or HOST:PORT, e.g. 127.0.0.1:8443, [::1]:8443 or localhost:8443";
    let (host, port) = host_port(s).map_err(|e| format!("{e}: {form}"))?;
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(|e| format!("cannot resolve {host:?}: {e} ({form})"))?
        .next()
        .ok_or_else(|| format!("{host:?} has no address ({form})"))
}

/// Parses RFC 3339 (`2026-01-02T03:04:05Z`) or `@UNIX_SECONDS`.
pub fn parse_time(s: &str) -> Result<OffsetDateTime> {
    if let Some(secs) = s.strip_prefix('@') {
        let n: i64 = secs
            .parse()
            .map_err(|_| UsageError(format!("invalid time {s:?}")))?;
        return OffsetDateTime::from_unix_timestamp(n)
            .map_err(|e| anyhow!(UsageError(e.to_string())));
    }
    OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
        UsageError(format!(
            "invalid time {s:?} (use RFC 3339, e.g. 2026-01-02T03:04:05Z, or @UNIX_SECONDS)"
        ))
        .into()
    })
}

/// RFC 3339 text.
pub fn fmt_time(t: OffsetDateTime) -> String {
    mtls_pki::rfc3339(&t)
}

/// Writes to stdout, surfacing a broken pipe as an error the caller can ignore.
pub fn out(s: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(printable(s).as_bytes())?;
    o.flush()?;
    Ok(())
}

/// [`out`] for what exists only on standard output (a token just minted): a closed output is
/// an error here, not the quiet end `mtls list | head` gets.
pub fn deliver(s: &str, what: &str) -> Result<()> {
    out(s).map_err(|e| match e.downcast_ref::<std::io::Error>() {
        Some(io) if io.kind() == std::io::ErrorKind::BrokenPipe => {
            anyhow::anyhow!("standard output was closed: the {what} was not delivered")
        }
        _ => e,
    })
}

/// Certificates, CRLs and file names carry text others chose: control characters (terminal
/// escape sequences that clear the screen or retitle the window, a carriage return that
/// overwrites a line) are shown escaped (`\u{1b}`), never sent to the terminal.
fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut escaped = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if unsafe_char(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// A `--days`-style option as a lifetime: a usage error when it is not positive or so large
/// that it ends after the year 9999 (checked before anything is written).
pub fn days(n: i64, flag: &str) -> Result<Duration> {
    if n <= 0 {
        return Err(UsageError(format!("{flag} must be a positive number of days")).into());
    }
    mtls_pki::issue::lifetime_days(n, now())
        .map_err(|e| UsageError(format!("{flag} {n} is too large: {e}")).into())
}

/// Current time. The binary is the only place that reads the clock.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A file-name-safe version of a certificate name.
pub fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| match c {
            '*' => '_',
            c if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' => c,
            _ => '_',
        })
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() {
        "cert".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_strips_ipv6_brackets_and_refuses_guesses() {
        let ok = |s: &str, host: &str, port: u16| {
            assert_eq!(host_port(s), Ok((host.to_string(), port)), "{s}");
        };
        ok("db.example.com:5432", "db.example.com", 5432);
        ok("127.0.0.1:443", "127.0.0.1", 443);
        ok("[::1]:443", "::1", 443);
        ok("[2001:db8::1]:8443", "2001:db8::1", 8443);
        ok("[fe80::1%2]:22", "fe80::1%2", 22);
        ok("[db.example.com]:5432", "db.example.com", 5432);
        for bad in [
            "::1:443",
            "[::1]",
            "[::1]443",
            "db.example.com",
            "db.example.com:",
            "db.example.com:65536",
            ":443",
            "[]:443",
            "[[::1]]:443",
        ] {
            assert!(host_port(bad).is_err(), "{bad} was accepted");
        }
    }
}
