//! Refused clients: log lines, rate-limited (every refusal is counted, but a flood of refused
//! handshakes must not fill the disk: a token bucket admits a burst and then a steady rate;
//! the next admitted line says how many were left out meanwhile), counts by reason, and the
//! last refusals kept for an operator's `/debug/refusals` (bounded; identities and reasons,
//! never key material).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

/// How many recent refusals are kept.
pub const KEPT: usize = 100;

/// One refusal as `/debug/refusals` shows it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Refusal {
    /// RFC 3339.
    pub at: String,
    /// The listener (or server) that refused.
    pub listener: String,
    /// The client's address.
    pub remote: String,
    /// The reason code (the same as in the metrics, the log and the 403 body).
    pub reason: String,
    /// The reason in words.
    pub detail: Option<String>,
    /// `handshake`, `connection` or `request`.
    pub stage: &'static str,
    /// The request method (requests only).
    pub method: Option<String>,
    /// The request path (requests only).
    pub path: Option<String>,
    /// The answer's status (requests only).
    pub status: Option<u16>,
    /// The client certificate's subject, serial and SHA-256 fingerprint, when it sent one
    /// that parsed.
    pub subject: Option<String>,
    /// See `subject`.
    pub serial: Option<String>,
    /// See `subject`.
    pub fingerprint: Option<String>,
}

/// The refusals of one server or listener: the log limiter, counts and the recent ones.
#[derive(Debug)]
pub struct RefusalLog {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
    kept: Mutex<(VecDeque<Refusal>, BTreeMap<String, u64>)>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl Default for RefusalLog {
    /// 20 lines a second after a burst of 100.
    fn default() -> Self {
        RefusalLog::new(20, 100)
    }
}

impl RefusalLog {
    /// Admits `burst` lines at once and `per_second` lines a second after that.
    pub fn new(per_second: u32, burst: u32) -> Self {
        RefusalLog {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(burst),
                last: Instant::now(),
                suppressed: 0,
            }),
            kept: Mutex::new((VecDeque::with_capacity(KEPT), BTreeMap::new())),
        }
    }

    /// Keeps `r` among the recent refusals and counts it by reason; returns what
    /// [`admit`](Self::admit) says about logging it.
    pub fn record(&self, mut r: Refusal) -> Option<u64> {
        if r.at.is_empty() {
            r.at = mtls_pki::rfc3339(&time::OffsetDateTime::now_utc());
        }
        if let Ok(mut k) = self.kept.lock() {
            *k.1.entry(r.reason.clone()).or_default() += 1;
            if k.0.len() == KEPT {
                k.0.pop_front();
            }
            k.0.push_back(r);
        }
        self.admit()
    }

    /// Records `r` and, when the limiter admits a line, logs it at WARN with every field it has
    /// (the one refusal line of every mtls server).
    pub fn report(&self, r: Refusal) {
        let line = r.clone();
        if let Some(suppressed) = self.record(r) {
            log_line(&line, suppressed);
        }
    }

    /// Logs `r` at DEBUG without keeping or counting it: what is no client's refusal (a
    /// handshake timeout, a dropped connection: load balancers' TCP health checks, port scans),
    /// which would otherwise be a WARN line every few seconds behind a load balancer. The
    /// metrics count them.
    pub fn report_unkept(&self, r: &Refusal) {
        tracing::debug!(
            listener = %r.listener,
            remote = %r.remote,
            reason = r.reason.as_str(),
            "handshake not completed"
        );
    }

    /// Reports a failed handshake of `listener` from `remote`: a refusal of a client
    /// ([`report`](Self::report), naming the certificate the verifier refused), or a timeout
    /// or I/O error ([`report_unkept`](Self::report_unkept)). Returns the metric labels
    /// (`result`, `reason`).
    pub fn handshake_failed(
        &self,
        listener: &str,
        remote: std::net::SocketAddr,
        e: &crate::accept::HandshakeError,
    ) -> (&'static str, String) {
        let timed_out = matches!(e, crate::accept::HandshakeError::TimedOut);
        let reason = e.reason();
        let mut r = Refusal {
            listener: listener.to_string(),
            remote: remote.to_string(),
            reason: reason.to_string(),
            stage: "handshake",
            ..Default::default()
        };
        if timed_out || reason == "io_error" {
            self.report_unkept(&r);
        } else {
            // The certificate the verifier refused, when it was one.
            if let Some(p) = mtls_verify::take_refused_peer(reason) {
                r.subject = Some(p.subject);
                r.serial = Some(p.serial);
                r.fingerprint = Some(p.fingerprint);
            }
            self.report(r);
        }
        if timed_out {
            ("timeout", String::new())
        } else {
            ("failed", reason.to_string())
        }
    }

    /// The recent refusals, oldest first.
    pub fn recent(&self) -> Vec<Refusal> {
        self.kept
            .lock()
            .map(|k| k.0.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Refusals so far by reason.
    pub fn counts(&self) -> Vec<(String, u64)> {
        self.kept
            .lock()
            .map(|k| k.1.iter().map(|(r, n)| (r.clone(), *n)).collect())
            .unwrap_or_default()
    }

    /// `Some(n)` when a refusal may be logged now, `n` being how many refusals were not logged
    /// since the last line; `None` when this one must not be.
    pub fn admit(&self) -> Option<u64> {
        let Ok(mut b) = self.bucket.lock() else {
            return None;
        };
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * self.per_second;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }
}

/// One refusal's log line (tracing wants a fixed message: one per stage).
fn log_line(r: &Refusal, suppressed: u64) {
    macro_rules! line {
        ($message:literal) => {
            tracing::warn!(
                listener = %r.listener,
                remote = %r.remote,
                reason = r.reason.as_str(),
                detail = r.detail.as_deref(),
                method = r.method.as_deref(),
                path = r.path.as_deref(),
                status = r.status,
                subject = r.subject.as_deref(),
                serial = r.serial.as_deref(),
                fingerprint = r.fingerprint.as_deref(),
                suppressed,
                $message
            )
        };
    }
    match r.stage {
        "handshake" => line!("handshake refused"),
        "connection" => line!("connection refused"),
        _ => line!("request refused"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_nothing_until_tokens_return_with_the_count_left_out() {
        let log = RefusalLog::new(1, 3);
        assert_eq!(
            (0..5).map(|_| log.admit()).collect::<Vec<_>>(),
            vec![Some(0), Some(0), Some(0), None, None]
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(log.admit(), Some(2));
        assert_eq!(log.admit(), None);
    }
}
