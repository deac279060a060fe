//! `mtls explain`: the decision a listener makes about a client certificate and a request
//! path, check by check, through the code the listener itself runs (its trust state with the
//! configured revocation sources, its canonical-path rule, its route policies) — so the
//! answer and its reason code are the ones the gateway logs, counts and sends.

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use time::OffsetDateTime;

use crate::config::{GatewayConfig, ListenerConfig, Mode};
use crate::state::ListenerState;
use crate::Error;
use mtls_serve::tls::ClientAuth;
use mtls_verify::Rejection;

/// One check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    /// An earlier check failed.
    NotReached,
    /// Does not apply to this listener.
    NotApplicable,
}

/// One step of the decision.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    /// The reason code when it failed (the gateway's code).
    pub code: Option<&'static str>,
    pub detail: String,
}

/// The whole decision.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub listener: String,
    pub path: String,
    pub allowed: bool,
    /// The reason code of the refusal (as in the gateway's log, metrics and 403 body).
    pub code: Option<&'static str>,
    /// What the client sees: `200 (proxied)`, `refused in the TLS handshake`, `401`, `403`, ….
    pub answer: String,
    pub checks: Vec<Check>,
}

/// Longest explain waits for CRLs from distribution points.
const EXPLAIN_FETCH_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

const CERT_CHECKS: [&str; 5] = [
    "client certificate",
    "path to a trusted CA",
    "key usage (clientAuth EKU, digitalSignature)",
    "validity",
    "revocation",
];

/// Which certificate check a rejection is the failure of.
fn failed_check(r: &Rejection) -> &'static str {
    match r {
        Rejection::NoCertificate => CERT_CHECKS[0],
        Rejection::MissingClientAuth | Rejection::WrongPurpose(_) | Rejection::KeyUsage(_) => {
            CERT_CHECKS[2]
        }
        Rejection::Expired { .. } | Rejection::NotYetValid { .. } => CERT_CHECKS[3],
        Rejection::Revoked
        | Rejection::UnknownRevocationStatus
        | Rejection::ExpiredCrl
        | Rejection::StaleRevocationFeed { .. }
        | Rejection::OcspUnavailable(_) => CERT_CHECKS[4],
        _ => CERT_CHECKS[1],
    }
}

/// The listener named `name` (or the only one).
pub fn listener<'a>(
    cfg: &'a GatewayConfig,
    name: Option<&str>,
) -> Result<&'a ListenerConfig, Error> {
    match name {
        Some(n) => cfg.listeners.iter().find(|l| l.name == n).ok_or_else(|| {
            Error::Config(format!(
                "no listener {n:?} (listeners: {})",
                cfg.listeners
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }),
        None => match cfg.listeners.as_slice() {
            [only] => Ok(only),
            _ => Err(Error::Config(
                "the configuration has several listeners: name one (--listener)".into(),
            )),
        },
    }
}

/// Explains the decision of listener `l` on `chain` (leaf first) asking for `path` at `now`,
/// with its revocation sources built as the gateway builds them (the CA's feed is seeded,
/// OCSP asked, within their bounds).
pub async fn explain(
    cfg: &GatewayConfig,
    l: &ListenerConfig,
    chain: &[CertificateDer<'static>],
    path: &str,
    now: OffsetDateTime,
) -> Result<Explanation, Error> {
    let sources = crate::revocation::Sources::build(l).await?;
    let mut state = ListenerState::load(
        l,
        cfg.limits.upstream_timeout,
        1,
        now,
        &sources.sources,
        None,
    )?;
    if let Some(fetched) = &sources.sources.fetched {
        // The running gateway fetches the CRLs its clients' certificates name in the
        // background; explain does it once, now (bounded), and decides with them.
        let _ = state.trust().identify(Some(chain), now);
        let round = mtls_client::crl::fetch_due(fetched, &l.client_ca, now, &|_| {});
        if let Ok(Some(true)) = tokio::time::timeout(EXPLAIN_FETCH_LIMIT, round).await {
            state = ListenerState::load(
                l,
                cfg.limits.upstream_timeout,
                2,
                now,
                &sources.sources,
                None,
            )?;
        }
    }
    let mut checks: Vec<Check> = Vec::new();
    let mut refused: Option<(&'static str, String)> = None;
    let revocation_configured = !l.crl.is_empty()
        || !l.crl_fetch.is_empty()
        || l.revocation_feed.is_some()
        || l.ocsp.is_some()
        || l.crl_from_certificates;
    // A revocation check that passed without any source said nothing.
    let passed = |name: &'static str| {
        if name == CERT_CHECKS[4] && !revocation_configured {
            Check {
                name,
                outcome: Outcome::NotApplicable,
                code: None,
                detail: "no revocation source configured (no CRL, feed or OCSP)".into(),
            }
        } else {
            Check {
                name,
                outcome: Outcome::Pass,
                code: None,
                detail: String::new(),
            }
        }
    };
    let identity = state.trust().identify(Some(chain), now);
    match &identity {
        Ok(peer) => {
            checks.push(Check {
                name: CERT_CHECKS[0],
                outcome: Outcome::Pass,
                code: None,
                detail: format!("{} (serial {})", peer.subject(), peer.serial()),
            });
            for name in &CERT_CHECKS[1..] {
                checks.push(passed(name));
            }
        }
        Err(r) => {
            // A listener that requires a certificate refuses it in the handshake, where the
            // reason travels as a TLS alert: counted and logged under that alert's code.
            let code = if l.client_auth == ClientAuth::Required {
                mtls_verify::handshake_code(r)
            } else {
                r.code()
            };
            let failed = failed_check(r);
            let mut reached = true;
            for name in CERT_CHECKS {
                if name == failed {
                    reached = false;
                    checks.push(Check {
                        name,
                        outcome: Outcome::Fail,
                        code: Some(code),
                        detail: r.to_string(),
                    });
                } else if reached {
                    checks.push(passed(name));
                } else {
                    checks.push(Check {
                        name,
                        outcome: Outcome::NotReached,
                        code: None,
                        detail: String::new(),
                    });
                }
            }
            refused = Some((code, r.to_string()));
        }
    }
    // The canonical-path rule applies only where per-path policies do (HTTP listeners).
    let http = l.mode == Mode::Http;
    let routes = http && state.has_routes();
    let canonical = state.can_route(path);
    checks.push(Check {
        name: "canonical path",
        outcome: match (routes, refused.is_some(), canonical) {
            (false, _, _) => Outcome::NotApplicable,
            (true, true, _) => Outcome::NotReached,
            (true, false, true) => Outcome::Pass,
            (true, false, false) => Outcome::Fail,
        },
        code: (routes && refused.is_none() && !canonical).then_some("invalid_path"),
        detail: String::new(),
    });
    if routes && refused.is_none() && !canonical {
        refused = Some(("invalid_path", "the path is not in canonical form".into()));
    }
    let policy = if http {
        state.policy_for(path)
    } else {
        &state.policy
    };
    let route = if http {
        state
            .route_for(path)
            .map(|(prefix, _)| format!("route {prefix}"))
            .unwrap_or_else(|| "listener policy".into())
    } else {
        "listener policy".into()
    };
    let policy_check = match (&identity, &refused) {
        (Ok(peer), None) => match policy.check(peer) {
            Ok(()) => Check {
                name: "policy",
                outcome: Outcome::Pass,
                code: None,
                detail: route,
            },
            Err(reason) => {
                refused = Some(("not_allowed", reason.clone()));
                Check {
                    name: "policy",
                    outcome: Outcome::Fail,
                    code: Some("not_allowed"),
                    detail: format!("{route}: {reason}"),
                }
            }
        },
        _ => Check {
            name: "policy",
            outcome: Outcome::NotReached,
            code: None,
            detail: route,
        },
    };
    checks.push(policy_check);
    let answer = match &refused {
        None if http => "proxied to the upstream".to_string(),
        None => "connected to the upstream".to_string(),
        Some(("not_allowed", _)) if !http => "connection closed after the handshake".into(),
        Some(("not_allowed", _)) => "403 INVALID_CERT".into(),
        Some(("invalid_path", _)) => "400 INVALID_PATH".into(),
        Some(_) if l.client_auth == ClientAuth::Required => "refused in the TLS handshake".into(),
        Some(("no_certificate", _)) => "401 NO_CLIENT_CERT".into(),
        Some(_) => "403 INVALID_CERT".into(),
    };
    Ok(Explanation {
        listener: l.name.clone(),
        path: path.to_string(),
        allowed: refused.is_none(),
        code: refused.as_ref().map(|(c, _)| *c),
        answer,
        checks,
    })
}
