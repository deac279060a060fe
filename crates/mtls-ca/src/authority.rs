//! What the CA does, independent of HTTP: enroll, renew, revoke, mint tokens, publish the CRL
//! and answer OCSP. Every certificate is recorded (and the token consumed) before it is returned.

use std::str::FromStr;
use std::sync::Arc;

use http::StatusCode;
use mtls_api::{FeedEvent, FeedPage, IssuedCertificate};
use mtls_pki::issue::{issue_leaf, CaCert, Issued, LeafRequest, Profile, PublicationUrls, Subject};
use mtls_pki::revocation::RevocationReason;
use mtls_pki::{San, Serial};
use mtls_store::{
    CertificateRecord, CertificateToRecord, IssueKind, ListFilter, NewToken, Status, Store,
};
use mtls_verify::{Rejection, TrustState, VerifiedPeer};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::config::{OcspSigner, Settings};
use crate::metrics::Metrics;
use crate::{tokens, ApiError, Error};

/// What the CLI hands over to start a CA.
pub struct AuthorityParts {
    /// The CA that signs leaves, CRLs and (or via a delegated signer) OCSP responses.
    pub issuer: CaCert,
    /// The root the issuer chains to (clients pin it).
    pub root: CertificateDer<'static>,
    pub store: Store,
    pub settings: Settings,
}

pub use mtls_verify::PeerIdentity;

struct CachedCrl {
    epoch: i64,
    this_update: OffsetDateTime,
    der: bytes::Bytes,
    pem: bytes::Bytes,
}

/// A published CRL, DER and PEM.
#[derive(Clone, Debug)]
pub struct PublishedCrl {
    pub der: bytes::Bytes,
    pub pem: bytes::Bytes,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
    /// The revocation feed position it covers (every revocation up to it is listed).
    pub epoch: i64,
}

struct OcspState {
    issuers: Vec<mtls_ocsp::IssuerInfo>,
    /// Replaced before a delegated signer reaches half its life (see [`Authority::responder`]).
    responder: std::sync::RwLock<Arc<mtls_ocsp::Responder>>,
    /// Serialises rotations so concurrent requests issue one new signer, not many; holds when
    /// a failed rotation may be tried again.
    rotating: tokio::sync::Mutex<Option<OffsetDateTime>>,
    /// The revocation epoch at which the current delegated signer was last found unrevoked:
    /// its record is looked at again only once something was revoked since.
    signer_checked_at_epoch: std::sync::atomic::AtomicI64,
}

/// The running CA.
pub struct Authority {
    issuer: CaCert,
    issuer_key: String,
    root: CertificateDer<'static>,
    roots_pem: String,
    chain_pem: String,
    store: Store,
    settings: Settings,
    trust: Arc<TrustState>,
    ocsp: OcspState,
    crl: tokio::sync::Mutex<Option<CachedCrl>>,
    root_crl: crate::root_crl::RootCrl,
    /// The head of the revocation feed (the revocation epoch), as last seen: long-polls wait on
    /// it. Kept current by [`Authority::follow_revocations`] while anyone waits.
    feed_head: tokio::sync::watch::Sender<i64>,
    pub(crate) metrics: Metrics,
}

/// Most revocations in one feed answer (a subscriber that is further behind asks again).
pub const FEED_PAGE: u32 = 5000;
/// Longest a feed request waits for a revocation before answering with none.
pub const FEED_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How often the database is asked for the feed's head while someone waits: revocations made
/// by another instance (or offline with `mtls revoke --database`) reach waiting subscribers
/// within this.
pub const FEED_POLL: std::time::Duration = std::time::Duration::from_millis(100);

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("issuer", &self.issuer.subject())
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn sha256_hex(b: &[u8]) -> String {
    mtls_pki::inspect::sha256_hex(b)
}

fn store_err(e: mtls_store::Error) -> ApiError {
    crate::error::store_error(e)
}

impl Authority {
    /// Builds the CA; with a delegated OCSP signer, issues (and records) its certificate now.
    pub async fn new(parts: AuthorityParts, now: OffsetDateTime) -> Result<Self, Error> {
        let AuthorityParts {
            issuer,
            root,
            store,
            settings,
        } = parts;
        issuer.check_valid_at(now)?;
        let issuer_key = sha256_hex(&issuer.key().public_key_spki());
        let root_pem = mtls_pki::pem_io::encode("CERTIFICATE", &root);
        let chain_pem = format!("{}{}", issuer.pem(), root_pem);
        let trust = TrustState::new(
            0,
            vec![root.clone()],
            &[],
            mtls_verify::RevocationOptions::default(),
        )
        .map_err(|e| Error::Config(format!("the root certificate: {e}")))?
        // Renewal is proof of possession of any certificate this CA issued, server ones too.
        .with_purpose(mtls_verify::Purpose::Any);
        let issuer_info = mtls_ocsp::IssuerInfo::from_der(issuer.der())
            .map_err(|e| Error::Ocsp(e.to_string()))?;
        let responder = match settings.ocsp_signer {
            OcspSigner::Issuer => {
                let key = mtls_pki::PrivateKey::from_pem_or_der(issuer.key().pkcs8_der(), None)?;
                mtls_ocsp::Responder::new(&issuer_info, issuer.der().to_vec(), key)
                    .map_err(|e| Error::Ocsp(e.to_string()))?
            }
            OcspSigner::Delegated => {
                new_delegated_responder(&issuer, &issuer_info, &issuer_key, &store, &settings, now)
                    .await?
            }
        };
        let root_crl = crate::root_crl::RootCrl::new(settings.root_crl.clone(), root.clone());
        Ok(Authority {
            issuer,
            issuer_key,
            roots_pem: root_pem,
            root,
            chain_pem,
            store,
            settings,
            trust: Arc::new(trust),
            ocsp: OcspState {
                issuers: vec![issuer_info],
                responder: std::sync::RwLock::new(Arc::new(responder)),
                rotating: tokio::sync::Mutex::new(None),
                signer_checked_at_epoch: std::sync::atomic::AtomicI64::new(i64::MIN),
            },
            crl: tokio::sync::Mutex::new(None),
            root_crl,
            feed_head: tokio::sync::watch::channel(0).0,
            metrics: Metrics::default(),
        })
    }

    /// The root's CRL as published at `/v1/root-crl` (see [`Settings::root_crl`]).
    pub(crate) fn root_crl(
        &self,
    ) -> Result<Arc<crate::root_crl::PublishedRootCrl>, crate::root_crl::Unavailable> {
        self.root_crl.current()
    }

    pub fn roots_pem(&self) -> &str {
        &self.roots_pem
    }
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }
    pub fn issuer(&self) -> &CaCert {
        &self.issuer
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
    pub(crate) fn trust(&self) -> &Arc<TrustState> {
        &self.trust
    }

    fn urls(&self) -> PublicationUrls {
        self.settings.publication_urls()
    }

    /// Issues the CA's own TLS server certificate (recorded like any other).
    pub async fn issue_server_credential(
        &self,
        names: &[String],
        now: OffsetDateTime,
    ) -> Result<(mtls_pki::PrivateKey, Vec<CertificateDer<'static>>), Error> {
        let sans = names
            .iter()
            .map(|n| San::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        let key = mtls_pki::PrivateKey::generate(mtls_pki::KeyAlgorithm::EcdsaP256)?;
        let request = LeafRequest {
            profile: Profile::Server,
            subject: Subject::cn(names.first().cloned().unwrap_or_else(|| "mtls-ca".into())),
            sans,
            lifetime: Duration::days(30),
            urls: PublicationUrls::default(),
        };
        let issued = issue_leaf(&self.issuer, key.key_pair(), &request, now)?;
        record(
            &self.store,
            &self.issuer_key,
            &issued,
            "server",
            IssueKind::Direct,
            "ca",
            now,
        )
        .await?;
        let chain = vec![issued.der.clone(), self.issuer.der().clone()];
        Ok((key, chain))
    }

    fn answer(&self, issued: &Issued) -> IssuedCertificate {
        let pem = issued.pem();
        IssuedCertificate {
            serial: issued.serial.to_string(),
            chain: format!("{pem}{}", self.chain_pem),
            certificate: pem,
            not_before: issued.not_before,
            not_after: issued.not_after,
        }
    }

    /// Issues and records; retries once with a new serial if the (random) serial collided.
    async fn issue_and_record(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        request: &LeafRequest,
        kind: IssueKind,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Issued, ApiError> {
        // The key's identity from the key itself (not by parsing the certificate again).
        let key_id = mtls_pki::key::key_identity(&public_key.subject_public_key_info());
        for _ in 0..2 {
            let issued =
                issue_leaf(&self.issuer, public_key, request, now).map_err(issue_refused)?;
            self.metrics.inc(&self.metrics.signed);
            let mut cert = CertificateToRecord::from_issued(
                &issued,
                &self.issuer_key,
                &request.profile.to_string(),
            );
            cert.key_id.clone_from(&key_id);
            match self
                .store
                .record_issued(cert, kind.clone(), actor, now)
                .await
            {
                Ok(()) => return Ok(issued),
                Err(mtls_store::Error::DuplicateSerial(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(ApiError::internal("could not allocate a unique serial"))
    }

    /// `POST /v1/sign`: a CSR and a one-time token.
    pub async fn enroll(
        &self,
        token: &str,
        csr_pem: &str,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, ApiError> {
        let (id, secret) = tokens::split(token)
            .ok_or_else(|| ApiError::invalid_token("malformed enrollment token"))?;
        let record = self
            .store
            .token(id)
            .await
            .map_err(store_err)?
            .filter(|t| tokens::secret_matches(secret, &t.secret_hash))
            .ok_or_else(|| ApiError::invalid_token("unknown enrollment token"))?;
        if let Some(at) = record.used_at {
            return Err(ApiError::invalid_token(format!(
                "enrollment token {id} was already used at {}; ask for a new token",
                mtls_pki::rfc3339(&at)
            )));
        }
        if record.expires_at <= now {
            return Err(ApiError::invalid_token(format!(
                "enrollment token {id} expired at {}; ask for a new token",
                record.expires_at
            )));
        }
        let csr = parse_csr(csr_pem)?;
        if !csr.subject.common_name.is_empty() && csr.subject.common_name != record.name {
            return Err(ApiError::forbidden(
                "NAME_NOT_ALLOWED",
                format!(
                    "the CSR asks for CN {:?} but the token is for {:?}",
                    csr.subject.common_name, record.name
                ),
            ));
        }
        // All of them: a name dropped here would make a certificate without a name the
        // token promised (and that the client may have asked for by leaving SANs out).
        let allowed = stored_names(&record.sans, "this token's", "ask for a new token")?;
        for s in &csr.sans {
            if !allowed.contains(s) {
                return Err(ApiError::forbidden(
                    "NAME_NOT_ALLOWED",
                    format!("the CSR asks for {s}, which the token does not allow"),
                ));
            }
        }
        let sans = if csr.sans.is_empty() {
            allowed
        } else {
            csr.sans.clone()
        };
        let profile = Profile::from_str(&record.profile)
            .map_err(|e| ApiError::internal(format!("stored token profile: {e}")))?;
        let request = LeafRequest {
            profile,
            subject: Subject::cn(record.name.clone()),
            sans,
            lifetime: self.settings.leaf_lifetime,
            urls: self.urls(),
        };
        let issued = self
            .issue_and_record(
                &csr.public_key,
                &request,
                IssueKind::Enrollment {
                    token_id: id.to_string(),
                },
                &format!("token:{id}"),
                now,
            )
            .await?;
        Ok(self.answer(&issued))
    }

    /// The inventory record of a verified peer, refusing certificates this CA did not issue,
    /// revoked ones and expired ones (with the message the renewal client shows).
    pub async fn current_record(
        &self,
        peer: &PeerIdentity,
        now: OffsetDateTime,
    ) -> Result<(Arc<VerifiedPeer>, CertificateRecord), ApiError> {
        let peer = match peer {
            PeerIdentity::Anonymous => return Err(ApiError::no_client_cert()),
            PeerIdentity::Rejected(Rejection::Expired { not_after, .. }) => {
                return Err(expired_error(*not_after))
            }
            PeerIdentity::Rejected(r) => {
                return Err(ApiError::forbidden("INVALID_CERT", r.to_string()))
            }
            PeerIdentity::Verified(p) => p.clone(),
        };
        let serial = peer.serial().clone();
        let rec = self
            .store
            .get(&serial, now)
            .await
            .map_err(store_err)?
            .filter(|r| {
                r.issuer_key == self.issuer_key && r.fingerprint == peer.fingerprint().to_string()
            })
            .ok_or_else(|| {
                ApiError::forbidden("INVALID_CERT", "the certificate was not issued by this CA")
            })?;
        match rec.status {
            Status::Valid => Ok((peer, rec)),
            Status::Revoked => Err(ApiError::forbidden(
                "INVALID_CERT",
                "the certificate is revoked",
            )),
            Status::Expired => Err(expired_error(rec.not_after)),
        }
    }

    /// `POST /v1/renew`: same identity, new validity; the key from `csr_pem` or the current one.
    pub async fn renew(
        &self,
        peer: &PeerIdentity,
        csr_pem: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, ApiError> {
        let (peer, rec) = self.current_record(peer, now).await?;
        let profile = Profile::from_str(&rec.profile).map_err(|_| {
            ApiError::forbidden("INVALID_CERT", "this certificate cannot be renewed")
        })?;
        let sans = stored_names(
            &rec.sans,
            "this certificate's",
            "enroll again for a new certificate",
        )?;
        let cert = mtls_pki::pem_io::parse_certificate(peer.certificate_der())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        // The whole subject (O, OU, C too: gateway policies match them, and `mtls renew`
        // refuses a renewal whose subject changed).
        let subject = Subject::from_name(cert.subject())
            .map_err(|e| ApiError::forbidden("INVALID_CERT", e.to_string()))?;
        // No longer than the certificate renewed (less its clock-skew backdate): renewing a
        // one-day certificate must not yield a 90-day one.
        let span = rec.not_after - rec.not_before;
        let renewed_lifetime = if span > mtls_pki::issue::CLOCK_SKEW_BACKDATE * 2 {
            span - mtls_pki::issue::CLOCK_SKEW_BACKDATE
        } else {
            span
        };
        let request = LeafRequest {
            profile,
            subject,
            sans,
            lifetime: self.settings.leaf_lifetime.min(renewed_lifetime),
            urls: self.urls(),
        };
        let previous = Serial::from_str(&rec.serial)
            .map_err(|e| ApiError::internal(format!("stored serial: {e}")))?;
        // Not renewable (a descendant revoked) or over the limit already: refused before
        // signing, with the answer recording would give (which stays the authority for
        // revocations and renewals arriving together).
        self.store
            .check_renewal(&previous, self.settings.renewal_limit, now)
            .await
            .map_err(store_err)?;
        let kind = IssueKind::Renewal {
            previous,
            limit: self.settings.renewal_limit,
        };
        let actor = format!("cert:{}", rec.serial);
        let issued = match csr_pem {
            Some(pem) => {
                let csr = parse_csr(pem)?;
                self.issue_and_record(&csr.public_key, &request, kind, &actor, now)
                    .await?
            }
            None => {
                let spki = rcgen::SubjectPublicKeyInfo::from_der(cert.public_key().raw)
                    .map_err(|e| ApiError::bad_request("INVALID_CERT", e.to_string()))?;
                self.issue_and_record(&spki, &request, kind, &actor, now)
                    .await?
            }
        };
        Ok(self.answer(&issued))
    }

    /// Whether the verified peer is an administrator (and its certificate is still good).
    pub async fn admin(
        &self,
        peer: &PeerIdentity,
        now: OffsetDateTime,
    ) -> Result<Arc<VerifiedPeer>, ApiError> {
        let (peer, record) = self.current_record(peer, now).await?;
        self.administrator(&peer, &record)?;
        Ok(peer)
    }

    /// Whether a verified peer whose record is `record` is an administrator: `[admins]`
    /// configured, the peer matches it, and its certificate is a client certificate.
    fn administrator(
        &self,
        peer: &VerifiedPeer,
        record: &CertificateRecord,
    ) -> Result<(), ApiError> {
        if self.settings.admins.is_empty() {
            return Err(ApiError::forbidden(
                "FORBIDDEN",
                "remote administration is disabled (no [admins] in the CA configuration)",
            ));
        }
        self.settings.admins.check(peer).map_err(|reason| {
            ApiError::forbidden("FORBIDDEN", format!("not an administrator: {reason}"))
        })?;
        // The mTLS listener takes any certificate this CA issued (servers renew theirs over
        // it); an administrator is a client: a web server's certificate whose name happens to
        // match an [admins] rule must not mint tokens, revoke or follow the feed.
        if record.profile != Profile::Client.to_string() {
            return Err(ApiError::forbidden(
                "FORBIDDEN",
                format!(
                    "not an administrator: a {} certificate; administrators use a client certificate",
                    record.profile
                ),
            ));
        }
        Ok(())
    }

    /// `POST /v1/revoke`: the holder revokes its own certificate; an administrator any.
    pub async fn revoke(
        &self,
        peer: &PeerIdentity,
        serial: Option<&str>,
        reason: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<mtls_store::Revocation, ApiError> {
        let reason = reason
            .map(RevocationReason::from_str)
            .transpose()
            .map_err(|e| ApiError::bad_request("INVALID_REQUEST", e.to_string()))?;
        let (peer, own) = self.current_record(peer, now).await?;
        let target = match serial {
            None => own.serial.clone(),
            Some(s) => Serial::from_str(s)
                .map_err(|e| ApiError::bad_request("INVALID_REQUEST", e.to_string()))?
                .to_string(),
        };
        let actor = if target == own.serial {
            format!("holder:{}", own.serial)
        } else {
            self.admin(&PeerIdentity::Verified(peer.clone()), now)
                .await?;
            format!("admin:{}", peer.subject())
        };
        let serial = Serial::from_str(&target)
            .map_err(|e| ApiError::bad_request("INVALID_REQUEST", e.to_string()))?;
        let revocation = self
            .store
            .revoke(&serial, Some(&self.issuer_key), reason, &actor, now)
            .await
            .map_err(store_err)?;
        // Wake this instance's feed subscribers now rather than at the next poll.
        if let Ok(head) = self.store.revocation_epoch().await {
            self.feed_head.send_if_modified(|h| advance(h, head));
        }
        Ok(revocation)
    }

    /// `GET /v1/revocations`: revocations after `after`, waiting up to `wait` (at most
    /// [`FEED_MAX_WAIT`] and half the idle timeout) for one when there is none yet. For
    /// administrators and the `[revocation_feed]` identities. A position beyond this CA's head (a database restored
    /// from a backup, another CA) is a gap the subscriber cannot close: 409 `FEED_GAP`, and it
    /// re-fetches the CRL.
    pub async fn revocations(
        &self,
        peer: &PeerIdentity,
        after: i64,
        wait: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<FeedPage, ApiError> {
        let (peer, record) = self.current_record(peer, now).await?;
        let subscriber = self.settings.feed_subscribers.check(&peer);
        // Administrators may follow it too, by the same test as every administrator action.
        if subscriber.is_err() && self.administrator(&peer, &record).is_err() {
            return Err(ApiError::forbidden(
                "FORBIDDEN",
                "not allowed to follow the revocation feed (add it to [revocation_feed] in the CA configuration)",
            ));
        }
        if after < 0 {
            return Err(ApiError::bad_request(
                "INVALID_REQUEST",
                "after must be a sequence number (0 or more)",
            ));
        }
        // Subscribe before reading the head, so a revocation in between wakes the wait.
        let mut rx = self.feed_head.subscribe();
        let mut head = self.store.revocation_epoch().await.map_err(store_err)?;
        self.feed_head.send_if_modified(|h| advance(h, head));
        if after > head {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "FEED_GAP",
                format!("this CA's revocation feed is at {head}, behind the requested {after}: re-fetch the CRL"),
            ));
        }
        if after == head && !wait.is_zero() {
            // Inside the connection's idle timeout, which would otherwise cut the wait.
            let wait = wait
                .min(FEED_MAX_WAIT)
                .min(self.settings.idle_timeout.unsigned_abs() / 2);
            // (A bool: the watch's guard must not be held across the read below.)
            let moved = matches!(
                tokio::time::timeout(wait, rx.wait_for(|h| *h > after)).await,
                Ok(Ok(_))
            );
            if moved {
                // From the database, as every head this answers with.
                head = self.store.revocation_epoch().await.map_err(store_err)?;
            }
        }
        let events = self
            .store
            .revocations_after(after, FEED_PAGE)
            .await
            .map_err(store_err)?;
        head = head.max(events.last().map_or(0, |e| e.seq));
        Ok(FeedPage {
            events: events
                .into_iter()
                .map(|e| FeedEvent {
                    seq: e.seq,
                    issuer_key: e.issuer_key,
                    serial: e.entry.serial.to_string(),
                    revoked_at: e.entry.revoked_at,
                    reason: e.entry.reason.map(|r| r.to_string()),
                })
                .collect(),
            head,
        })
    }

    /// Keeps the feed's head current while subscribers wait: asks the database every
    /// [`FEED_POLL`] (revocations by other instances sharing it, or made offline). Polling
    /// rather than PostgreSQL `LISTEN/NOTIFY`: the same code serves SQLite, survives
    /// reconnects without re-subscribing, and costs one indexed read per poll, only while a
    /// request waits.
    pub async fn follow_revocations(self: Arc<Self>, mut shutdown: mtls_serve::Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FEED_POLL) => {}
                _ = shutdown.wait() => return,
            }
            // Only the sender's own handle: nobody is waiting.
            if self.feed_head.receiver_count() == 0 {
                continue;
            }
            match self.store.revocation_epoch().await {
                Ok(head) => {
                    self.feed_head.send_if_modified(|h| follow(h, head));
                }
                Err(e) => tracing::debug!(error = %e, "reading the revocation feed head"),
            }
        }
    }

    /// Mints a one-time token (CLI or an administrator). Returns the token string, once.
    pub async fn create_token(
        &self,
        request: TokenRequest,
        created_by: &str,
        now: OffsetDateTime,
    ) -> Result<(String, OffsetDateTime), ApiError> {
        if request.ttl > self.settings.max_token_ttl {
            return Err(ApiError::bad_request(
                "INVALID_REQUEST",
                format!(
                    "token lifetime {} exceeds max_token_ttl {}",
                    request.ttl, self.settings.max_token_ttl
                ),
            ));
        }
        let (token, expires_at) =
            mint_token(&self.store, self.issuer.der(), request, created_by, now)
                .await
                .map_err(|e| match e {
                    MintError::Invalid(m) => ApiError::bad_request("INVALID_REQUEST", m),
                    MintError::Issuer(e) => issue_refused(e),
                    MintError::Store(e) => store_err(e),
                })?;
        Ok((token, expires_at))
    }

    /// Certificates in the inventory (administrators).
    pub async fn list(
        &self,
        filter: &ListFilter,
        now: OffsetDateTime,
    ) -> Result<Vec<CertificateRecord>, ApiError> {
        self.store.list(filter, now).await.map_err(store_err)
    }

    /// The current CRL: regenerated when any instance revoked something since it was built, or
    /// when half its lifetime has passed; otherwise served from memory.
    pub async fn crl(&self, now: OffsetDateTime) -> Result<PublishedCrl, ApiError> {
        let mut cached = self.crl.lock().await;
        // Read under the lock: a request that read the counter before another built a newer
        // CRL would otherwise replace that one with an older build. Compared for equality: a
        // counter that went back (a database restored or failed over) must not keep serving a
        // CRL (and feed position) from ahead of it.
        let epoch = self.store.revocation_epoch().await.map_err(store_err)?;
        let refresh_after: Duration = self.settings.crl_lifetime / 2_i32;
        if let Some(c) = cached.as_ref() {
            if c.epoch == epoch && now < c.this_update + refresh_after && now >= c.this_update {
                return Ok(self.published(c));
            }
        }
        let signed = self
            .store
            .sign_crl(&self.issuer, "ca", now, self.settings.crl_lifetime)
            .await
            .map_err(store_err)?;
        let (der, this_update) = (signed.der, signed.this_update);
        let pem = mtls_pki::pem_io::encode("X509 CRL", &der);
        self.metrics.inc(&self.metrics.crl_generated);
        let c = CachedCrl {
            epoch,
            this_update,
            der: bytes::Bytes::from(der.to_vec()),
            pem: bytes::Bytes::from(pem),
        };
        let out = self.published(&c);
        *cached = Some(c);
        Ok(out)
    }

    fn published(&self, c: &CachedCrl) -> PublishedCrl {
        PublishedCrl {
            der: c.der.clone(),
            pem: c.pem.clone(),
            this_update: c.this_update,
            next_update: c.this_update + self.settings.crl_lifetime,
            epoch: c.epoch,
        }
    }

    /// Answers one DER OCSP request: a signed DER OCSPResponse, or the error status to answer
    /// with (kept apart because only signed answers may be cached: see `http::ocsp_get`).
    pub async fn ocsp(
        &self,
        request: &[u8],
        now: OffsetDateTime,
    ) -> Result<Vec<u8>, mtls_ocsp::ResponseStatus> {
        use mtls_ocsp::{CertStatus, ResponseStatus};
        let req = match mtls_ocsp::parse_request(request, &self.ocsp.issuers) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "malformed OCSP request");
                self.metrics.inc(&self.metrics.ocsp_malformed);
                return Err(ResponseStatus::MalformedRequest);
            }
        };
        if req.items.iter().any(|i| i.issuer.is_none()) {
            // RFC 5019 2.2.3: we are not authoritative for that issuer.
            self.metrics.inc(&self.metrics.ocsp_unauthorized);
            return Err(ResponseStatus::Unauthorized);
        }
        let mut statuses = Vec::with_capacity(req.items.len());
        for item in &req.items {
            let status = match self.store.get(&item.serial, now).await {
                Err(e) => {
                    tracing::warn!(error = %e, "OCSP lookup failed");
                    self.metrics.inc(&self.metrics.db_unavailable);
                    return Err(ResponseStatus::TryLater);
                }
                Ok(Some(r)) if r.issuer_key == self.issuer_key => match r.revoked_at {
                    Some(at) => CertStatus::Revoked {
                        at,
                        reason: r.reason(),
                    },
                    None => CertStatus::Good,
                },
                Ok(_) => CertStatus::Unknown,
            };
            statuses.push(status);
        }
        let this_update = now.replace_nanosecond(0).unwrap_or(now);
        let responder = match self.responder(now).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "no usable OCSP signer");
                return Err(ResponseStatus::TryLater);
            }
        };
        match responder.sign(
            &req,
            &statuses,
            this_update,
            this_update,
            Some(this_update + self.settings.ocsp_lifetime),
        ) {
            Ok(der) => {
                self.metrics.inc(&self.metrics.ocsp_ok);
                Ok(der)
            }
            Err(e) => {
                tracing::error!(error = %e, "signing an OCSP response failed");
                Err(e.response_status())
            }
        }
    }
}

impl Authority {
    fn current_responder(&self) -> Option<Arc<mtls_ocsp::Responder>> {
        self.ocsp.responder.read().ok().map(|r| r.clone())
    }

    /// Whether an administrator revoked the delegated signer `r` (its key may be compromised:
    /// the CA must stop signing with it at once). Looked up only when the revocation epoch
    /// moved since it was last found unrevoked.
    async fn signer_revoked(
        &self,
        r: &mtls_ocsp::Responder,
        now: OffsetDateTime,
    ) -> Result<bool, Error> {
        use std::sync::atomic::Ordering;
        if !r.is_delegated() {
            return Ok(false);
        }
        let epoch = self.store.revocation_epoch().await?;
        if self.ocsp.signer_checked_at_epoch.load(Ordering::Acquire) == epoch {
            return Ok(false);
        }
        let revoked = self
            .store
            .get(r.signer_serial(), now)
            .await?
            .is_some_and(|rec| rec.revoked_at.is_some());
        if !revoked {
            self.ocsp
                .signer_checked_at_epoch
                .store(epoch, Ordering::Release);
        }
        Ok(revoked)
    }

    /// The OCSP responder, replacing a delegated signer that has passed half its life (it
    /// carries ocsp-nocheck, so it is kept short-lived instead of being revocable) or that an
    /// administrator revoked. A signer that ends with the issuing CA is kept: its successor
    /// could not outlive it (it would be due at once, and every OCSP request would issue and
    /// record one more signer).
    pub async fn responder(&self, now: OffsetDateTime) -> Result<Arc<mtls_ocsp::Responder>, Error> {
        let due = |r: &mtls_ocsp::Responder| {
            r.is_delegated()
                && now >= r.signer_not_after() - delegated_lifetime(&self.settings) / 2_i32
                && r.signer_not_after() < self.issuer.not_after()
        };
        let current = self
            .current_responder()
            .ok_or_else(|| Error::Ocsp("responder lock poisoned".into()))?;
        let revoked = self.signer_revoked(&current, now).await?;
        if !revoked && !due(&current) {
            return Ok(current);
        }
        let mut retry_at = self.ocsp.rotating.lock().await;
        if let Some(r) = self.current_responder() {
            // Another request rotated meanwhile: its signer is new, hence neither due nor
            // revoked.
            let still_revoked = revoked && Arc::ptr_eq(&r, &current);
            if !due(&r) && !still_revoked {
                return Ok(r);
            }
        }
        // A rotation that failed is not tried on every request (each would sign and try to
        // record a signer); the current signer answers meanwhile, while it is valid and
        // unrevoked.
        let usable = !revoked && now < current.signer_not_after();
        if usable && retry_at.is_some_and(|t| now < t) {
            return Ok(current);
        }
        if revoked {
            tracing::warn!(serial = %current.signer_serial(), "the OCSP signing certificate was revoked: replacing it");
        }
        let info = self
            .ocsp
            .issuers
            .first()
            .ok_or_else(|| Error::Ocsp("no issuer".into()))?;
        let rotated = new_delegated_responder(
            &self.issuer,
            info,
            &self.issuer_key,
            &self.store,
            &self.settings,
            now,
        )
        .await;
        let fresh = match rotated {
            Ok(r) => Arc::new(r),
            Err(e) if usable => {
                tracing::error!(error = %e, signer_not_after = %current.signer_not_after(), "cannot rotate the OCSP signing certificate: answering with the current one, trying again in 30 s");
                *retry_at = Some(now + ROTATION_RETRY);
                return Ok(current);
            }
            Err(e) => return Err(e),
        };
        *retry_at = None;
        if let Ok(mut w) = self.ocsp.responder.write() {
            *w = fresh.clone();
        }
        tracing::info!(not_after = %fresh.signer_not_after(), "rotated the OCSP signing certificate");
        Ok(fresh)
    }
}

/// Moves the feed's head forward to `head` (never back: a request that read the database just
/// before a revocation committed must not take back the wake-up it caused); whether it moved.
fn advance(h: &mut i64, head: i64) -> bool {
    if head > *h {
        *h = head;
        true
    } else {
        false
    }
}

/// Sets the feed's head to the database's (the poller's, which reads it last); whether it
/// changed. Also backwards: after a restore or a failover the database is the truth, and a
/// head kept from before would answer every long poll at once.
fn follow(h: &mut i64, head: i64) -> bool {
    if head != *h {
        *h = head;
        true
    } else {
        false
    }
}

/// Pause before a failed rotation of the delegated OCSP signer is tried again.
const ROTATION_RETRY: Duration = Duration::seconds(30);

/// Lifetime of a delegated OCSP signer: a day's worth of responses, at most a week.
fn delegated_lifetime(settings: &Settings) -> Duration {
    let l: Duration = settings.ocsp_lifetime.saturating_mul(24_i32);
    l.min(Duration::days(7))
}

async fn new_delegated_responder(
    issuer: &CaCert,
    info: &mtls_ocsp::IssuerInfo,
    issuer_key: &str,
    store: &Store,
    settings: &Settings,
    now: OffsetDateTime,
) -> Result<mtls_ocsp::Responder, Error> {
    // The key on a blocking thread: an RSA key (RSA-4096 takes seconds to generate) would hold
    // one of the runtime's few workers, and every request queued on it, meanwhile.
    let algorithm = issuer.key().algorithm();
    let key = tokio::task::spawn_blocking(move || mtls_pki::PrivateKey::generate(algorithm))
        .await
        .map_err(|e| Error::Ocsp(format!("generating the OCSP signer's key: {e}")))??;
    let signed = mtls_pki::issue::issue_ocsp_signer(
        issuer,
        key.key_pair(),
        &Subject::cn(format!("{} OCSP Responder", issuer_cn(issuer))),
        now,
        delegated_lifetime(settings),
    )?;
    // Recorded like every certificate this CA signs.
    record(
        store,
        issuer_key,
        &signed,
        "ocsp-signer",
        IssueKind::Direct,
        "ca",
        now,
    )
    .await?;
    mtls_ocsp::Responder::new(info, signed.der.to_vec(), key)
        .map_err(|e| Error::Ocsp(e.to_string()))
}

fn issuer_cn(ca: &CaCert) -> String {
    mtls_pki::pem_io::parse_certificate(ca.der())
        .ok()
        .and_then(|c| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok().map(str::to_string))
        })
        .unwrap_or_else(|| "mtls CA".into())
}

fn expired_error(not_after: OffsetDateTime) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "CERT_EXPIRED",
        format!(
            "the certificate expired at {}; an expired certificate cannot be renewed: enroll again with a new token",
            mtls_pki::rfc3339(&not_after)
        ),
    )
}

fn parse_csr(pem: &str) -> Result<mtls_pki::csr::CsrInfo, ApiError> {
    let csr = mtls_pki::csr::parse(pem.as_bytes())
        .map_err(|e| ApiError::bad_request("INVALID_CSR", e.to_string()))?;
    if csr.requests_ca {
        return Err(ApiError::bad_request(
            "INVALID_CSR",
            "the CSR asks for a CA certificate (basicConstraints CA:TRUE)",
        ));
    }
    Ok(csr)
}

async fn record(
    store: &Store,
    issuer_key: &str,
    issued: &Issued,
    profile: &str,
    kind: IssueKind,
    actor: &str,
    now: OffsetDateTime,
) -> Result<(), mtls_store::Error> {
    store
        .record_issued(
            CertificateToRecord::from_issued(issued, issuer_key, profile),
            kind,
            actor,
            now,
        )
        .await
}

/// The names recorded with a certificate (to renew it with) or a token (to enroll with).
/// Names recorded before a stricter rule (a trailing dot, an all-digit last label) are refused
/// before signing, never dropped or rewritten: a renewal would make a certificate whose names
/// differ from the one renewed, which the renewal client refuses (each attempt recording
/// another certificate); an enrollment one with fewer names than the token promised. `whose`
/// and `remedy` word the refusal ("this token's", "ask for a new token").
fn stored_names(stored: &[String], whose: &str, remedy: &str) -> Result<Vec<San>, ApiError> {
    stored
        .iter()
        .map(|name| match San::parse(name) {
            Ok(san) if san.to_string() == *name => Ok(san),
            _ => Err(ApiError::forbidden(
                "INVALID_CERT",
                format!("{whose} name {name:?} is no longer issued as written: {remedy}"),
            )),
        })
        .collect()
}

/// The answer when `issue_leaf` (or `check_issuable`, for a token) refuses.
fn issue_refused(e: mtls_pki::Error) -> ApiError {
    match e {
        // The CA cannot sign now (its certificate expired or is not yet valid): the CA's fault,
        // not the request's, so clients retry instead of backing off as after a refusal.
        e @ mtls_pki::Error::IssuerNotValid { .. } => crate::error::cannot_sign_now(&e),
        // The names are outside the CA's name constraints: signing them would make a
        // certificate every relying party refuses.
        e @ mtls_pki::Error::NameNotPermitted { .. } => ApiError::new(
            http::StatusCode::FORBIDDEN,
            "NAME_NOT_PERMITTED",
            e.to_string(),
        ),
        // The CA itself cannot issue (its constraints, or what it signs, do not verify): the
        // CA's fault, not the request's.
        e @ (mtls_pki::Error::IssuedUnverifiable { .. }
        | mtls_pki::Error::UnusableNameConstraints { .. }) => {
            tracing::error!(error = %e, "cannot issue");
            ApiError::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "CA_MISCONFIGURED",
                "the CA cannot issue certificates that verify; its operator must fix it",
            )
        }
        e => ApiError::bad_request("INVALID_REQUEST", e.to_string()),
    }
}

/// What a token allows.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub name: String,
    pub sans: Vec<String>,
    pub profile: Profile,
    pub ttl: Duration,
}

/// Why minting a token failed.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("{0}")]
    Invalid(String),
    /// The issuing CA would refuse what the token allows (names outside its name
    /// constraints, the CA not valid now): a token that could only fail at enrollment.
    #[error("no token minted: {0}")]
    Issuer(mtls_pki::Error),
    #[error(transparent)]
    Store(#[from] mtls_store::Error),
}

/// Mints and stores a token (used by the CA service and by `mtls ca token` directly), after
/// checking that `issuer` (the issuing CA's certificate) would sign what it allows.
pub async fn mint_token(
    store: &Store,
    issuer: &CertificateDer<'static>,
    request: TokenRequest,
    created_by: &str,
    now: OffsetDateTime,
) -> Result<(String, OffsetDateTime), MintError> {
    let TokenRequest {
        name,
        sans,
        profile,
        ttl,
    } = request;
    if ttl <= Duration::ZERO {
        return Err(MintError::Invalid(
            "the token lifetime must be positive".into(),
        ));
    }
    let parsed = sans
        .iter()
        .map(|s| San::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MintError::Invalid(e.to_string()))?;
    // The certificate the token can yield must be valid for its profile.
    let leaf = LeafRequest {
        profile,
        subject: Subject::cn(name.clone()),
        sans: parsed.clone(),
        lifetime: Duration::days(1),
        urls: PublicationUrls::default(),
    };
    leaf.check()
        .map_err(|e| MintError::Invalid(e.to_string()))?;
    if name.is_empty() {
        return Err(MintError::Invalid(
            "the token needs a name (the certificate's CN)".into(),
        ));
    }
    // A name no certificate can carry (too long, control characters) would make a token that
    // can never enroll.
    Subject::cn(name.clone())
        .check()
        .map_err(|e| MintError::Invalid(e.to_string()))?;
    // Nor one its CA would refuse to sign (its name constraints).
    mtls_pki::issue::check_issuable(issuer, &leaf, now).map_err(MintError::Issuer)?;
    let generated = tokens::generate().map_err(|e| MintError::Invalid(e.to_string()))?;
    let expires_at = now + ttl;
    store
        .create_token(
            NewToken {
                id: generated.id.clone(),
                secret_hash: generated.secret_hash.clone(),
                name,
                sans: parsed.iter().map(ToString::to_string).collect(),
                profile: profile.to_string(),
                expires_at,
                created_by: created_by.to_string(),
            },
            now,
        )
        .await?;
    Ok((generated.token.to_string(), expires_at))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mtls_pki::{issue, KeyAlgorithm, PrivateKey};
    use mtls_store::{ListFilter, Location};

    /// An authority whose issuing CA ends `ca_left` from `now`, with a delegated OCSP signer.
    async fn authority(dir: &std::path::Path, now: OffsetDateTime, ca_left: Duration) -> Authority {
        configured_authority(dir, now, ca_left, &Default::default(), Settings::default()).await
    }

    /// [`authority`], its issuing CA limited by `constraints`, with `settings`.
    async fn configured_authority(
        dir: &std::path::Path,
        now: OffsetDateTime,
        ca_left: Duration,
        constraints: &mtls_pki::NameConstraints,
        settings: Settings,
    ) -> Authority {
        let key = || PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let start = now - Duration::days(1);
        let root =
            issue::new_root(&Subject::cn("Test Root"), key(), start, Duration::days(30)).unwrap();
        let issuer = issue::new_constrained_intermediate(
            &root,
            &Subject::cn("Test CA"),
            key(),
            start,
            Duration::days(1) + ca_left,
            0,
            constraints,
        )
        .unwrap();
        let store = Store::open(&Location::Sqlite(dir.join("inventory.db")))
            .await
            .unwrap();
        let parts = AuthorityParts {
            issuer,
            root: root.der().clone(),
            store,
            settings,
        };
        Authority::new(parts, now).await.unwrap()
    }

    /// An expired issuing CA is the CA's failure (503, retried), not a refused request (400,
    /// after which renewal daemons back off for hours).
    #[tokio::test]
    async fn an_expired_issuing_ca_is_unavailable_not_a_bad_request() {
        let now = OffsetDateTime::now_utc();
        let dir = tempfile::tempdir().unwrap();
        let ca = authority(dir.path(), now, Duration::days(1)).await;
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let request = LeafRequest {
            profile: Profile::Client,
            subject: Subject::cn("late"),
            sans: Vec::new(),
            lifetime: Duration::days(1),
            urls: Default::default(),
        };
        let err = ca
            .issue_and_record(
                key.key_pair(),
                &request,
                IssueKind::Direct,
                "t",
                now + Duration::days(3),
            )
            .await
            .unwrap_err();
        assert_eq!(err.status, http::StatusCode::SERVICE_UNAVAILABLE, "{err:?}");
        assert_eq!(err.code, "CA_UNAVAILABLE");
    }

    /// A CA valid for 30 days whose `[admins]` allow the common name `admin_cn`.
    async fn administered_authority(
        dir: &std::path::Path,
        now: OffsetDateTime,
        admin_cn: &str,
    ) -> Authority {
        let settings = Settings {
            admins: mtls_verify::Policy {
                allow_cn: vec![admin_cn.into()],
                ..Default::default()
            },
            ..Settings::default()
        };
        configured_authority(dir, now, Duration::days(30), &Default::default(), settings).await
    }

    /// The feed is for `[revocation_feed]` identities and administrators; an administrator is
    /// a client certificate: a server certificate whose name matches an `[admins]` rule is
    /// refused, as everywhere else administrators are checked.
    #[tokio::test]
    async fn the_feed_takes_administrators_by_client_certificate_only() {
        let now = OffsetDateTime::now_utc();
        let dir = tempfile::tempdir().unwrap();
        let ca = administered_authority(dir.path(), now, "ca-admin").await;
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let peer_for = |profile: Profile| {
            let request = LeafRequest {
                profile,
                subject: Subject::cn("ca-admin"),
                sans: vec![San::dns("ca-admin.example").unwrap()],
                lifetime: Duration::days(1),
                urls: Default::default(),
            };
            let ca = &ca;
            let key = &key;
            async move {
                let issued = ca
                    .issue_and_record(key.key_pair(), &request, IssueKind::Direct, "t", now)
                    .await
                    .unwrap();
                let chain = [issued.der.clone(), ca.issuer.der().clone()];
                PeerIdentity::Verified(ca.trust().identify(Some(&chain), now).unwrap())
            }
        };
        let wait = std::time::Duration::from_millis(10);
        let server = peer_for(Profile::Server).await;
        let e = ca.revocations(&server, 0, wait, now).await.unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::FORBIDDEN, "{e:?}");
        let client = peer_for(Profile::Client).await;
        ca.revocations(&client, 0, wait, now).await.unwrap();
    }

    /// After the database's revocation counter went back under the running CA (a restore, a
    /// failover to a standby that missed commits), the CA answers nothing from it, 503
    /// DATABASE_ROLLED_BACK (an OCSP "good" or a feed page from it would un-revoke), until it
    /// is level again.
    #[tokio::test]
    async fn a_database_that_went_back_is_refused_until_level_again() {
        let now = OffsetDateTime::now_utc();
        let dir = tempfile::tempdir().unwrap();
        let ca = administered_authority(dir.path(), now, "admin").await;
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let request = |cn: &str| LeafRequest {
            profile: Profile::Client,
            subject: Subject::cn(cn),
            sans: Vec::new(),
            lifetime: Duration::days(1),
            urls: Default::default(),
        };
        let admin = ca
            .issue_and_record(
                key.key_pair(),
                &request("admin"),
                IssueKind::Direct,
                "t",
                now,
            )
            .await
            .unwrap();
        let other = ca
            .issue_and_record(
                key.key_pair(),
                &request("other"),
                IssueKind::Direct,
                "t",
                now,
            )
            .await
            .unwrap();
        let chain = [admin.der.clone(), ca.issuer.der().clone()];
        let peer = PeerIdentity::Verified(ca.trust().identify(Some(&chain), now).unwrap());
        ca.store()
            .revoke(&other.serial, None, None, "t", now)
            .await
            .unwrap();
        let wait = std::time::Duration::from_millis(300);
        let page = ca.revocations(&peer, 0, wait, now).await.unwrap();
        assert_eq!((page.events.len(), page.head), (1, 1));
        // The counter goes back to 0, as a restored database's would.
        let db = rusqlite::Connection::open(dir.path().join("inventory.db")).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        db.execute_batch(
            "UPDATE revocation_epoch SET epoch = 0;
             UPDATE certificates SET revocation_seq = NULL, revoked_at = NULL;",
        )
        .unwrap();
        let err = ca.revocations(&peer, 0, wait, now).await.unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                "DATABASE_ROLLED_BACK"
            )
        );
        let issuer_info = mtls_ocsp::IssuerInfo::from_der(ca.issuer.der()).unwrap();
        let ocsp_request = mtls_ocsp::build_request(&issuer_info, &other.serial, None).unwrap();
        assert_eq!(
            ca.ocsp(&ocsp_request, now).await.unwrap_err(),
            mtls_ocsp::ResponseStatus::TryLater,
            "no OCSP answer from a database that lost a revocation"
        );
        let token = TokenRequest {
            name: "late".into(),
            sans: vec![],
            profile: Profile::Client,
            ttl: Duration::minutes(10),
        };
        let err = ca.create_token(token, "t", now).await.unwrap_err();
        assert_eq!(err.code, "DATABASE_ROLLED_BACK");
        // The revocation made again: level, answering.
        db.execute_batch("UPDATE revocation_epoch SET epoch = 1;")
            .unwrap();
        db.execute(
            "UPDATE certificates SET revocation_seq = 1, revoked_at = ?1 WHERE serial = ?2",
            rusqlite::params![now.unix_timestamp(), other.serial.to_string()],
        )
        .unwrap();
        let page = ca.revocations(&peer, 0, wait, now).await.unwrap();
        assert_eq!((page.events.len(), page.head), (1, 1));
    }

    /// A CRL asked for while the CA cannot sign (expired) is a 503, like an issuance, and
    /// takes no CRL number: anonymous requests must not spend numbers and audit rows.
    #[tokio::test]
    async fn no_crl_number_is_taken_while_the_ca_cannot_sign() {
        let now = OffsetDateTime::now_utc();
        let dir = tempfile::tempdir().unwrap();
        let ca = authority(dir.path(), now, Duration::days(1)).await;
        let issuer_key = mtls_pki::inspect::sha256_hex(&ca.issuer.key().public_key_spki());
        let before = ca.store().crl_number(&issuer_key).await.unwrap();
        for _ in 0..3 {
            let err = ca.crl(now + Duration::days(3)).await.unwrap_err();
            assert_eq!(err.status, http::StatusCode::SERVICE_UNAVAILABLE, "{err:?}");
            assert_eq!(err.code, "CA_UNAVAILABLE");
        }
        assert_eq!(ca.store().crl_number(&issuer_key).await.unwrap(), before);
        ca.crl(now).await.unwrap();
    }

    /// Names outside the issuing CA's name constraints are refused as forbidden (403, a code
    /// of their own), before anything is recorded; names inside are issued.
    #[tokio::test]
    async fn names_outside_the_name_constraints_are_forbidden() {
        let now = OffsetDateTime::now_utc();
        let dir = tempfile::tempdir().unwrap();
        let constraints = mtls_pki::NameConstraints {
            permitted: vec![mtls_pki::NameSubtree::parse("dns:svc.internal").unwrap()],
            excluded: Vec::new(),
        };
        let ca = configured_authority(
            dir.path(),
            now,
            Duration::days(30),
            &constraints,
            Settings::default(),
        )
        .await;
        let before = signers(&ca, now).await;
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let request = |name: &str| LeafRequest {
            profile: Profile::Server,
            subject: Subject::cn(name),
            sans: vec![San::dns(name).unwrap()],
            lifetime: Duration::days(1),
            urls: Default::default(),
        };
        let err = ca
            .issue_and_record(
                key.key_pair(),
                &request("api.example.com"),
                IssueKind::Direct,
                "t",
                now,
            )
            .await
            .unwrap_err();
        assert_eq!(err.status, http::StatusCode::FORBIDDEN, "{err:?}");
        assert_eq!(err.code, "NAME_NOT_PERMITTED");
        assert_eq!(signers(&ca, now).await, before, "nothing recorded");
        ca.issue_and_record(
            key.key_pair(),
            &request("api.svc.internal"),
            IssueKind::Direct,
            "t",
            now,
        )
        .await
        .unwrap();
        assert_eq!(signers(&ca, now).await, before + 1);
        // Nor is a token minted for them (it could only fail at enrollment).
        let token = |name: &str| TokenRequest {
            name: "api".into(),
            sans: vec![format!("dns:{name}")],
            profile: Profile::Server,
            ttl: Duration::minutes(10),
        };
        let err = ca
            .create_token(token("api.example.com"), "t", now)
            .await
            .unwrap_err();
        assert_eq!(err.status, http::StatusCode::FORBIDDEN, "{err:?}");
        assert_eq!(err.code, "NAME_NOT_PERMITTED");
        ca.create_token(token("api.svc.internal"), "t", now)
            .await
            .unwrap();
    }

    /// Names recorded before the trailing dot was dropped or an all-digit last label refused
    /// make renewal a clear refusal (403, enroll again), not a 500 or a certificate with other
    /// names than the one renewed.
    #[test]
    fn names_no_longer_issued_as_written_are_not_renewed() {
        let ok = vec!["DNS:api.example.com".to_string(), "IP:10.0.0.1".to_string()];
        assert_eq!(stored_names(&ok, "w", "r").unwrap().len(), 2);
        for stale in ["DNS:api.example.com.", "DNS:host.123"] {
            let e =
                stored_names(&[ok[0].clone(), stale.to_string()], "w", "enroll again").unwrap_err();
            assert_eq!(e.status, http::StatusCode::FORBIDDEN, "{stale}");
            assert!(
                e.message.contains(stale) && e.message.contains("enroll again"),
                "{e:?}"
            );
        }
    }

    /// A token stored with a name no longer issued as written is refused at enrollment (403,
    /// ask for a new token, nothing recorded, the token left unused), not turned into a
    /// certificate without that name.
    #[tokio::test]
    async fn a_token_name_no_longer_issued_is_refused_not_dropped() {
        let now = OffsetDateTime::now_utc();
        let dir = tempfile::tempdir().unwrap();
        let ca = authority(dir.path(), now, Duration::days(30)).await;
        let generated = tokens::generate().unwrap();
        ca.store()
            .create_token(
                NewToken {
                    id: generated.id.clone(),
                    secret_hash: generated.secret_hash.clone(),
                    name: "api".into(),
                    sans: vec!["DNS:api.example.com".into(), "DNS:api.example.com.".into()],
                    profile: Profile::Server.to_string(),
                    expires_at: now + Duration::hours(1),
                    created_by: "t".into(),
                },
                now,
            )
            .await
            .unwrap();
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = mtls_pki::csr::create(&key, &Subject::cn("api"), &[]).unwrap();
        let before = signers(&ca, now).await;
        let err = ca.enroll(&generated.token, &csr, now).await.unwrap_err();
        assert_eq!(err.status, http::StatusCode::FORBIDDEN, "{err:?}");
        assert!(
            err.message.contains("api.example.com.") && err.message.contains("new token"),
            "{err:?}"
        );
        assert_eq!(signers(&ca, now).await, before, "nothing recorded");
        let stored = ca.store().token(&generated.id).await.unwrap().unwrap();
        assert!(stored.used_at.is_none(), "the token is not spent");
    }

    async fn signers(ca: &Authority, now: OffsetDateTime) -> usize {
        ca.store()
            .list(&ListFilter::default(), now)
            .await
            .unwrap()
            .len()
    }

    #[tokio::test]
    async fn the_delegated_ocsp_signer_is_renewed_at_half_life_but_not_past_the_ca() {
        let now = OffsetDateTime::now_utc();
        let half = delegated_lifetime(&Settings::default()) / 2_i32;
        let later = now + half + Duration::minutes(1);

        // A CA with years left: the signer is replaced once, at half its life.
        let dir = tempfile::tempdir().unwrap();
        let ca = authority(dir.path(), now, Duration::days(365)).await;
        let first = ca.responder(now).await.unwrap();
        assert!(Arc::ptr_eq(&first, &ca.responder(now).await.unwrap()));
        let second = ca.responder(later).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&second, &ca.responder(later).await.unwrap()));
        assert_eq!(signers(&ca, later).await, 2);

        // A CA that ends before a new signer's half life: the signer ends with it and is kept,
        // however many requests come.
        let dir = tempfile::tempdir().unwrap();
        let ca = authority(dir.path(), now, half / 2_i32).await;
        let first = ca.responder(now).await.unwrap();
        assert_eq!(first.signer_not_after(), ca.issuer().not_after());
        for _ in 0..3 {
            let at = now + Duration::minutes(1);
            assert!(Arc::ptr_eq(&first, &ca.responder(at).await.unwrap()));
        }
        assert_eq!(signers(&ca, now).await, 1);
    }

    /// A rotation that cannot record its new signer (the inventory refuses writes) leaves the
    /// current, still valid signer answering (not every OCSP request failing with tryLater
    /// for half the signer's life), is not tried again on every request, and happens once
    /// writes work again.
    #[tokio::test]
    async fn a_failed_rotation_keeps_the_current_ocsp_signer_answering() {
        let now = OffsetDateTime::now_utc();
        let half = delegated_lifetime(&Settings::default()) / 2_i32;
        let later = now + half + Duration::minutes(1);
        let dir = tempfile::tempdir().unwrap();
        let ca = authority(dir.path(), now, Duration::days(365)).await;
        let first = ca.responder(now).await.unwrap();
        let db = rusqlite::Connection::open(dir.path().join("inventory.db")).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        db.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON certificates
             BEGIN SELECT RAISE(ABORT, 'the disk is full'); END;",
        )
        .unwrap();
        assert!(Arc::ptr_eq(&first, &ca.responder(later).await.unwrap()));
        db.execute_batch("DROP TRIGGER refuse").unwrap();
        // Within the pause: not tried again.
        let soon = later + Duration::seconds(10);
        assert!(Arc::ptr_eq(&first, &ca.responder(soon).await.unwrap()));
        assert_eq!(signers(&ca, soon).await, 1);
        // After it: rotated.
        let after = later + ROTATION_RETRY + Duration::seconds(1);
        let second = ca.responder(after).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(signers(&ca, after).await, 2);
    }

    #[tokio::test]
    async fn a_revoked_ocsp_signer_is_replaced_at_once() {
        let now = OffsetDateTime::now_utc();
        let dir = tempfile::tempdir().unwrap();
        let ca = authority(dir.path(), now, Duration::days(365)).await;
        let first = ca.responder(now).await.unwrap();

        // Another certificate revoked (the epoch moves): the signer stays.
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let other = issue::issue_ocsp_signer(
            &ca.issuer,
            key.key_pair(),
            &Subject::cn("other"),
            now,
            Duration::days(1),
        )
        .unwrap();
        record(
            &ca.store,
            &ca.issuer_key,
            &other,
            "client",
            IssueKind::Direct,
            "test",
            now,
        )
        .await
        .unwrap();
        ca.store
            .revoke(&other.serial, Some(&ca.issuer_key), None, "admin", now)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &ca.responder(now).await.unwrap()));

        // The signer itself revoked: replaced on the next request, once.
        ca.store
            .revoke(
                first.signer_serial(),
                Some(&ca.issuer_key),
                None,
                "admin",
                now,
            )
            .await
            .unwrap();
        let second = ca.responder(now).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_ne!(first.signer_serial(), second.signer_serial());
        assert!(Arc::ptr_eq(&second, &ca.responder(now).await.unwrap()));
        assert_eq!(signers(&ca, now).await, 3);
    }
}
