use std::path::PathBuf;

use time::OffsetDateTime;

/// Everything that can go wrong in the PKI core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An output file exists and overwriting was not requested.
    #[error("{} already exists; refusing to overwrite it (pass --force to replace it)", path.display())]
    AlreadyExists { path: PathBuf },
    /// A replaced file's owner could not be given to its replacement.
    #[error("{}: cannot give the new file the owner {uid}:{gid} of the one it replaces ({source}); run as that user or as root, or remove the old file first", path.display())]
    KeepOwner {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: std::io::Error,
    },
    /// A private key file can be read by other users.
    #[error("{} is readable by group or others (mode {mode:03o}); secrets (private keys, passphrase files) must be owner-only: run `chmod 600 {}`", path.display(), path.display())]
    InsecurePermissions { path: PathBuf, mode: u32 },
    /// Input could not be parsed.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// Input held no object of the expected kind.
    #[error("no {what} found in the input")]
    NotFound { what: &'static str },
    /// An encrypted key was given without a passphrase.
    #[error("the private key is encrypted and no passphrase was given")]
    PassphraseRequired,
    /// Decryption failed: the passphrase is wrong or the file is damaged.
    #[error("cannot decrypt the private key: wrong passphrase or damaged file")]
    WrongPassphrase,
    /// A key type or size that mtls does not handle.
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    /// A SAN or subject value is not acceptable.
    #[error("invalid name {value:?}: {reason}")]
    InvalidName { value: String, reason: &'static str },
    /// The CSR's self-signature does not verify.
    #[error(
        "the CSR's signature does not verify (the request was altered or is not signed by its key)"
    )]
    CsrBadSignature,
    /// The CSR asks for something the profile does not allow.
    #[error("CSR refused: {0}")]
    CsrRefused(String),
    /// The issuing CA cannot sign at this time.
    #[error("issuing CA {subject:?} is not valid at {}: it is valid from {} to {}", crate::rfc3339(.now), crate::rfc3339(.not_before), crate::rfc3339(.not_after))]
    IssuerNotValid {
        subject: String,
        now: OffsetDateTime,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    /// A certificate's names (its DNS and IP SANs, or a host-name-like CN when it has no DNS
    /// SAN, which OpenSSL checks) fall outside its CA's name constraints.
    #[error("the CA {issuer:?} may not certify {names}: outside its name constraints (`mtls inspect` on the CA certificate shows them)")]
    NameNotPermitted { issuer: String, names: String },
    /// The CA's name constraints cannot be issued under: a name form no verifier of mtls
    /// (rustls-webpki) supports, or an extension that does not parse.
    #[error("cannot issue with CA {subject:?}: {reason}")]
    UnusableNameConstraints { subject: String, reason: String },
    /// A certificate just signed does not verify under its own CA: the CA is misconfigured.
    #[error("the certificate just signed by CA {issuer:?} does not verify under it ({detail}): check the CA certificate")]
    IssuedUnverifiable { issuer: String, detail: String },
    /// The issuing certificate is not a CA or may not sign certificates.
    #[error("{0} is not a CA certificate allowed to sign certificates")]
    NotACa(String),
    /// Signing a CA certificate under this issuer would exceed its pathLenConstraint.
    #[error("{issuer} has pathLenConstraint {path_len}: a CA it signs would never validate (sign intermediates with the root)")]
    PathLenExceeded { issuer: String, path_len: u32 },
    /// The CA's subject cannot be written, byte for byte, as the issuer name of what mtls
    /// signs: the certificates and CRLs would not chain to the CA.
    #[error("cannot sign with CA {subject:?}: its subject would not be reproduced exactly as the issuer name of the certificates and CRLs signed with it, so they would not verify ({reason}); use a CA whose subject has each attribute type once")]
    IssuerNameNotReproducible { subject: String, reason: String },
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// A URL to publish in a certificate is not acceptable.
    #[error("invalid URL {value:?}: {reason}")]
    InvalidUrl { value: String, reason: &'static str },
    /// A validity request that makes no sense.
    #[error("invalid validity: {0}")]
    InvalidValidity(String),
    /// The certificate generator refused the parameters.
    #[error("certificate encoding failed: {0}")]
    Encode(#[from] rcgen::Error),
    /// PKCS#12 building failed.
    #[error("PKCS#12 export failed: {0}")]
    Pkcs12(String),
    /// A signature (of a CRL, an OCSP response, an OCSP signer's certificate) uses an
    /// algorithm outside [`crate::signature::SIGNATURE_ALGORITHMS`].
    #[error("signature algorithm {0} is not accepted (accepted: ECDSA P-256/P-384/P-521, Ed25519, RSA of 2048 bits or more with PKCS#1 v1.5 or PSS; SHA-256/384/512)")]
    UnsupportedSignatureAlgorithm(String),
    /// A signature does not verify with the key it should have been made with.
    #[error("the signature does not verify with the signer's key")]
    BadSignature,
    /// A certificate or CRL that had to come from a given CA did not (its issuer name or its
    /// signature is another CA's).
    #[error("{what} was not issued by {issuer:?}")]
    NotIssuedBy { what: String, issuer: String },
    /// Key generation or encryption failed in the crypto library.
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
}

impl Error {
    pub(crate) fn malformed(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Malformed {
            what,
            detail: detail.to_string(),
        }
    }
}
