//! Group commit: the write operations both backends apply, batched into one transaction.
//!
//! Each operation runs inside its own savepoint, so one refused operation (a reused token, a
//! duplicate serial) rolls back alone while the others in the batch commit. A batch commits once:
//! every caller's `Ok` means the commit returned, i.e. its rows are durable.

use mtls_pki::revocation::RevocationReason;
use mtls_pki::Serial;
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::{CertificateToRecord, Error, IssueKind, NewToken, Result};

/// Most operations committed together; bounds the latency one batch adds.
pub(crate) const MAX_BATCH: usize = 256;

#[derive(Debug)]
pub(crate) enum WriteOp {
    Issue {
        cert: CertificateToRecord,
        /// [`crate::key_id_of`] the certificate, computed by the caller (off the writer).
        key: Option<String>,
        kind: IssueKind,
        actor: String,
    },
    Revoke {
        serial: Serial,
        /// When set, the serial must have been issued by this CA key.
        issuer_key: Option<String>,
        reason: Option<RevocationReason>,
        actor: String,
    },
    CreateToken {
        token: NewToken,
    },
    /// Allocates the next CRL number of `issuer_key` and reads its revocations in the same
    /// transaction, ordered against revocations (SQLite: the write lock; PostgreSQL: the
    /// revocation epoch's row, which every revocation updates): a CRL with a higher number
    /// never lists fewer revocations than one with a lower number, however many CAs and
    /// `mtls crl` runs build CRLs at once.
    CrlSnapshot {
        issuer_key: String,
        actor: String,
    },
    /// Re-applies the revocations a published CRL lists to a restored inventory, and raises
    /// the CRL number and revocation epoch to what was published.
    Reconcile {
        issuer_key: String,
        entries: Vec<mtls_pki::revocation::RevokedEntry>,
        crl_number: u64,
        epoch: i64,
        actor: String,
    },
}

#[derive(Debug)]
pub(crate) enum WriteResult {
    Done,
    Revoked(Box<crate::Revocation>),
    Number(u64),
    Crl(u64, Vec<mtls_pki::revocation::RevokedEntry>),
}

pub(crate) struct Job {
    pub op: WriteOp,
    pub now: OffsetDateTime,
    pub reply: oneshot::Sender<Result<WriteResult>>,
}

/// Every operation of a batch that could not run at all.
pub(crate) fn unavailable_all(
    n: usize,
    context: &'static str,
    detail: &str,
) -> Vec<Result<WriteResult>> {
    (0..n)
        .map(|_| {
            Err(Error::Unavailable {
                context,
                detail: detail.to_string(),
            })
        })
        .collect()
}

/// After a failed commit nothing in the batch is durable: every caller learns it.
pub(crate) fn fail_all(results: &mut [Result<WriteResult>], context: &'static str, detail: &str) {
    for r in results.iter_mut() {
        if r.is_ok() {
            *r = Err(Error::Unavailable {
                context,
                detail: detail.to_string(),
            });
        }
    }
}

impl WriteResult {
    pub(crate) fn into_unit(self) -> Result<()> {
        Ok(())
    }
    pub(crate) fn into_revocation(self) -> Result<crate::Revocation> {
        match self {
            WriteResult::Revoked(r) => Ok(*r),
            other => Err(Error::Corrupt(format!("unexpected write result {other:?}"))),
        }
    }
    pub(crate) fn into_crl(self) -> Result<(u64, Vec<mtls_pki::revocation::RevokedEntry>)> {
        match self {
            WriteResult::Crl(n, entries) => Ok((n, entries)),
            other => Err(Error::Corrupt(format!("unexpected write result {other:?}"))),
        }
    }
    pub(crate) fn into_number(self) -> Result<u64> {
        match self {
            WriteResult::Number(n) => Ok(n),
            other => Err(Error::Corrupt(format!("unexpected write result {other:?}"))),
        }
    }
}
