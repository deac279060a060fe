//! `mtls-ops`: the checks an operator runs before an outage or a breach finds the problem.
//!
//! What it does:
//! - [`doctor`]: audits certificate, key and CRL files, PKI directories and the gateway's and
//!   the CA's configuration files, and reports each problem as a [`doctor::Finding`] with a
//!   stable code, a severity, the file and the fix (the guide's checklists and anti-patterns,
//!   made executable);
//! - [`expiry`]: reads the expiry and renewal state of certificate and CRL files, for the
//!   monitor's metrics.
//!
//! What it does not do: change anything it audits, talk to the network, or serve (the CLI's
//! `mtls doctor` prints the findings; `mtls monitor` serves the readings).
#![forbid(unsafe_code)]

pub mod doctor;
pub mod expiry;
