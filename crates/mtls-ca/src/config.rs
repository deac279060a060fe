//! The CA service's configuration file (`mtls ca serve --config ca.toml`) and its runtime
//! settings.
//!
//! ```toml
//! listen = "127.0.0.1:9443"
//! publish_listen = "127.0.0.1:9080"            # plain HTTP: CRL, OCSP, roots
//! metrics_listen = "127.0.0.1:9091"            # plain HTTP: /metrics, /healthz (private)
//! pki = "pki"                                  # root.crt, intermediate.crt/.key, ca-chain.pem
//! database = "postgres://mtls@127.0.0.1/mtls"  # default: <pki>/inventory.db
//! public_url = "http://ca.example.com:9080"    # CRL DP and AIA OCSP URL in issued certificates
//! server_names = ["ca.example.com", "127.0.0.1"]
//! leaf_lifetime = "90d"
//! max_token_ttl = "24h"
//! crl_lifetime = "1d"
//! ocsp_lifetime = "1h"
//! ocsp_signer = "delegated"                    # or "issuer"
//! max_renewals = 10                            # renewals of one renewal lineage per renewal_window
//! renewal_window = "1h"                        # (more: 429 RATE_LIMITED with Retry-After)
//! root_crl = "pki/root-crl.pem"                # the offline root's CRL, served at /v1/root-crl
//!                                              # (default: <pki>/root-crl.pem)
//! [admins]                                     # who may revoke others, list, mint tokens
//! allow_cn = ["ca-admin"]
//! [revocation_feed]                            # who may follow GET /v1/revocations
//! allow_cn = ["gateway"]                       # (administrators may too)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use mtls_pki::issue::PublicationUrls;
use mtls_store::RenewalLimit;
use mtls_verify::Policy;
use serde::Deserialize;
use time::Duration;

use crate::Error;

/// Which key signs OCSP responses.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OcspSigner {
    /// A short-lived delegated responder certificate (id-kp-OCSPSigning, ocsp-nocheck) issued
    /// at start-up, so the CA key signs only certificates and CRLs.
    #[default]
    Delegated,
    /// The issuing CA's key itself.
    Issuer,
}

/// The configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// Plain-HTTP listener for CRL, OCSP and roots (what `public_url` points at).
    pub publish_listen: Option<SocketAddr>,
    /// Plain-HTTP listener for `/metrics` (Prometheus) and `/healthz`: keep it on loopback
    /// or a management network. None by default.
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default = "default_pki")]
    pub pki: PathBuf,
    pub database: Option<String>,
    pub public_url: Option<String>,
    #[serde(default)]
    pub server_names: Vec<String>,
    pub leaf_lifetime: Option<String>,
    pub max_token_ttl: Option<String>,
    pub crl_lifetime: Option<String>,
    pub ocsp_lifetime: Option<String>,
    /// Connections with no traffic either way for this long are closed (default 60s).
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub ocsp_signer: OcspSigner,
    /// Most renewals of one renewal lineage within `renewal_window` (default 10).
    pub max_renewals: Option<u32>,
    /// The rolling window of `max_renewals` (default 1h).
    pub renewal_window: Option<String>,
    #[serde(default)]
    pub admins: Policy,
    /// Identities that may follow the revocation feed (administrators may too).
    #[serde(default)]
    pub revocation_feed: Policy,
    /// The root's CRL (`mtls ca root-crl`) to publish at `/v1/root-crl` (default:
    /// `<pki>/root-crl.pem`, relative paths from the file's directory).
    pub root_crl: Option<PathBuf>,
}

fn default_pki() -> PathBuf {
    PathBuf::from("pki")
}

impl Config {
    /// Parses and checks a configuration file's text.
    pub fn parse(text: &str) -> Result<Config, Error> {
        let c: Config = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        c.settings()?;
        Ok(c)
    }

    /// The runtime settings this file describes.
    pub fn settings(&self) -> Result<Settings, Error> {
        let d = |v: &Option<String>, default: Duration, what: &str| -> Result<Duration, Error> {
            match v {
                None => Ok(default),
                Some(s) => mtls_serve::duration::parse_time(s)
                    .map_err(|e| Error::Config(format!("{what}: {e}"))),
            }
        };
        let defaults = Settings::default();
        let settings = Settings {
            public_url: self
                .public_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_string()),
            leaf_lifetime: d(&self.leaf_lifetime, defaults.leaf_lifetime, "leaf_lifetime")?,
            max_token_ttl: d(&self.max_token_ttl, defaults.max_token_ttl, "max_token_ttl")?,
            crl_lifetime: d(&self.crl_lifetime, defaults.crl_lifetime, "crl_lifetime")?,
            ocsp_lifetime: d(&self.ocsp_lifetime, defaults.ocsp_lifetime, "ocsp_lifetime")?,
            idle_timeout: d(&self.idle_timeout, defaults.idle_timeout, "idle_timeout")?,
            renewal_limit: RenewalLimit {
                max: self.max_renewals.unwrap_or(defaults.renewal_limit.max),
                window: d(
                    &self.renewal_window,
                    defaults.renewal_limit.window,
                    "renewal_window",
                )?,
            },
            ocsp_signer: self.ocsp_signer,
            admins: self.admins.clone(),
            feed_subscribers: self.revocation_feed.clone(),
            // Resolved against the PKI directory by whoever loads it (see `root_crl`).
            root_crl: self.root_crl.clone(),
        };
        if settings.renewal_limit.max == 0 {
            return Err(Error::Config(
                "max_renewals = 0 would refuse every renewal: give at least 1 (a client whose \
                 answer was lost renews again from the same certificate)"
                    .into(),
            ));
        }
        // Checked here, with the check issuance applies: otherwise the CA starts and then
        // refuses every /v1/sign and /v1/renew.
        if let Some(u) = &self.public_url {
            settings.publication_urls().check().map_err(|e| {
                Error::Config(format!(
                    "public_url {u:?}: {e}; issued certificates carry <public_url>/v1/crl \
                     and <public_url>/ocsp, which relying parties fetch over plain http \
                     (RFC 5280 4.2.1.13: CRLs and OCSP answers are signed, and an https one \
                     would need a revocation check of its own): use the http:// URL of \
                     publish_listen"
                ))
            })?;
        }
        Ok(settings)
    }
}

/// What the running CA needs to know beyond its keys and database.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Base URL of this CA as clients reach it; issued certificates then carry
    /// `<url>/v1/crl` as CRL Distribution Point and `<url>/ocsp` as AIA OCSP responder.
    pub public_url: Option<String>,
    pub leaf_lifetime: Duration,
    pub max_token_ttl: Duration,
    pub crl_lifetime: Duration,
    pub ocsp_lifetime: Duration,
    /// How long a connection may go without traffic before the server closes it.
    pub idle_timeout: Duration,
    /// How many certificates may be renewed from one certificate, and within what window.
    pub renewal_limit: RenewalLimit,
    pub ocsp_signer: OcspSigner,
    /// Administrators (mTLS identities). Empty: no remote administration at all.
    pub admins: Policy,
    /// Who may follow the revocation feed besides administrators.
    pub feed_subscribers: Policy,
    /// The file holding the root's CRL, published at `/v1/root-crl` while it is a CRL of the
    /// root (see `mtls ca root-crl`). `None`: none is published.
    pub root_crl: Option<PathBuf>,
}

impl Settings {
    /// The CRL distribution point and OCSP responder URLs issued certificates carry.
    pub fn publication_urls(&self) -> PublicationUrls {
        match &self.public_url {
            Some(u) => PublicationUrls {
                crl: Some(format!("{u}/v1/crl")),
                ocsp: Some(format!("{u}/ocsp")),
            },
            None => PublicationUrls::default(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            public_url: None,
            leaf_lifetime: Duration::days(90),
            max_token_ttl: Duration::hours(24),
            crl_lifetime: Duration::days(1),
            ocsp_lifetime: Duration::hours(1),
            idle_timeout: Duration::seconds(60),
            // A renewal daemon renews once per certificate, plus a few retries when an answer
            // is lost; nothing legitimate comes near 10 an hour from one certificate.
            renewal_limit: RenewalLimit {
                max: 10,
                window: Duration::HOUR,
            },
            ocsp_signer: OcspSigner::Delegated,
            admins: Policy::default(),
            feed_subscribers: Policy::default(),
            root_crl: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        let e = Config::parse("listen = \"127.0.0.1:0\"\nleaf_lifetime = \"90\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("leaf_lifetime") && e.contains("needs a unit"),
            "{e}"
        );
        let c = Config::parse("listen = \"127.0.0.1:0\"\nleaf_lifetime = \"1w\"\n").unwrap();
        assert_eq!(c.settings().unwrap().leaf_lifetime, Duration::weeks(1));
    }

    #[test]
    fn config_file() {
        let c = Config::parse(
            "listen = \"127.0.0.1:9443\"\npublic_url = \"http://ca.test:9080/\"\nleaf_lifetime = \"1h\"\n[admins]\nallow_cn = [\"admin\"]\n",
        )
        .unwrap();
        let s = c.settings().unwrap();
        assert_eq!(s.public_url.as_deref(), Some("http://ca.test:9080"));
        assert_eq!(s.leaf_lifetime, Duration::hours(1));
        assert!(Config::parse("listen = \"127.0.0.1:1\"\nbogus = 1\n").is_err());
        // https (or anything but http) is refused at load, saying why.
        for bad in [
            "https://ca.test",
            "ftp://ca.test",
            "http://",
            "http://ca test",
        ] {
            let e = Config::parse(&format!(
                "listen = \"127.0.0.1:1\"\npublic_url = \"{bad}\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("public_url") && e.contains("plain http"),
                "{bad}: {e}"
            );
        }
        let e = Config::parse("listen = \"127.0.0.1:1\"\npublic_url = \"https://ca.test\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only http:// URLs"), "{e}");
        assert!(Config::parse("listen = \"127.0.0.1:1\"\ncrl_lifetime = \"x\"\n").is_err());
    }

    #[test]
    fn renewal_limit() {
        let default = Config::parse("listen = \"127.0.0.1:1\"\n").unwrap();
        assert_eq!(
            default.settings().unwrap().renewal_limit,
            RenewalLimit {
                max: 10,
                window: Duration::hours(1)
            }
        );
        let c =
            Config::parse("listen = \"127.0.0.1:1\"\nmax_renewals = 3\nrenewal_window = \"1d\"\n")
                .unwrap();
        assert_eq!(
            c.settings().unwrap().renewal_limit,
            RenewalLimit {
                max: 3,
                window: Duration::days(1)
            }
        );
        for (bad, what) in [
            ("max_renewals = 0", "max_renewals"),
            ("max_renewals = -1", "max_renewals"),
            ("renewal_window = \"60\"", "renewal_window"),
            ("renewal_window = \"0s\"", "renewal_window"),
        ] {
            let e = Config::parse(&format!("listen = \"127.0.0.1:1\"\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{bad}: {e}");
        }
    }
}
