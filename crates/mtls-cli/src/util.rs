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

/// [`duration_arg`] for `std::time::Duration` flags.
pub fn std_duration_arg(s: &str) -> std::result::Result<std::time::Duration, String> {
    mtls_serve::duration::parse(s).map_err(|e| e.to_string())
}

/// Parses a listening address: `IP:PORT` (`127.0.0.1:8443`, `[::1]:8443`) or `HOST:PORT`
/// (`localhost:8443`, resolved now; the first address is used). A clap value parser.
pub fn listen_arg(s: &str) -> std::result::Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let form = "use IP:PORT or HOST:PORT, e.g. 127.0.0.1:8443, [::1]:8443 or localhost:8443";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("no port in {s:?}: {form}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("invalid port {port:?}: {form}"));
    }
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port.parse::<u16>().unwrap_or(0)))
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
