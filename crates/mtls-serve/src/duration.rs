//! The one duration syntax of every mtls flag, config file and API field: a number with a unit
//! (`500ms`, `10s`, `5m`, `12h`, `90d`, `2w`, or combined like `1h30m`), parsed by `humantime`.
//!
//! A bare number is refused: `--ttl 5` once meant five days to one command and five seconds to
//! another. Zero and anything over 100 years are refused too (a zero poll interval spins; a
//! century is a typo, and adding it to a timestamp could overflow).

use std::time::Duration;

/// The longest accepted duration: 100 years of 366 days.
pub const MAX: Duration = Duration::from_secs(100 * 366 * 86_400);

const EXAMPLES: &str = "examples: 500ms, 30s, 10m, 12h, 90d, 2w";

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// The input is a bare number, without a unit.
    #[error("duration {input:?} needs a unit ({EXAMPLES})")]
    NoUnit {
        /// The input as given.
        input: String,
    },
    /// The input is not a duration `humantime` can read.
    #[error("invalid duration {input:?}: {reason} ({EXAMPLES})")]
    Invalid {
        /// The input as given.
        input: String,
        /// The parser's objection.
        reason: String,
    },
    /// The duration is zero.
    #[error("duration {input:?} must be longer than zero")]
    Zero {
        /// The input as given.
        input: String,
    },
    /// The duration is longer than [`MAX`] (100 years).
    #[error("duration {input:?} is longer than 100 years")]
    TooLong {
        /// The input as given.
        input: String,
    },
}

/// Parses a duration with a unit. See the module docs for the rules.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return Err(DurationError::NoUnit {
            input: input.into(),
        });
    }
    let d = humantime::parse_duration(s).map_err(|e| DurationError::Invalid {
        input: input.into(),
        reason: e.to_string(),
    })?;
    if d.is_zero() {
        return Err(DurationError::Zero {
            input: input.into(),
        });
    }
    if d > MAX {
        return Err(DurationError::TooLong {
            input: input.into(),
        });
    }
    Ok(d)
}

/// [`parse`], as a `time::Duration` (for arithmetic on certificate timestamps).
pub fn parse_time(input: &str) -> Result<time::Duration, DurationError> {
    let d = parse(input)?;
    // Cannot fail below MAX, but never panic on it.
    time::Duration::try_from(d).map_err(|_| DurationError::TooLong {
        input: input.into(),
    })
}

/// Formats a duration the way [`parse`] reads it (`1h 30m`).
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `#[serde(with = "mtls_serve::duration::serde")]` for `std::time::Duration` fields.
pub mod serde {
    use std::time::Duration;

    /// Reads a string through [`super::parse`].
    pub fn deserialize<'de, D: ::serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = <String as ::serde::Deserialize>::deserialize(d)?;
        super::parse(&s).map_err(::serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_required_and_every_unit_reads() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse(" 1h30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_time("10m"),
            Ok(time::Duration::minutes(10)),
            "time::Duration form"
        );
    }

    #[test]
    fn bare_numbers_zero_overflow_and_garbage_are_refused() {
        for bare in ["5", "0", "300", "99999999999999999999"] {
            let e = parse(bare).unwrap_err();
            assert!(matches!(e, DurationError::NoUnit { .. }), "{bare}: {e}");
            assert!(e.to_string().contains("examples: 500ms"), "{e}");
        }
        assert!(matches!(parse("0s"), Err(DurationError::Zero { .. })));
        assert!(matches!(
            parse("36601d"),
            Err(DurationError::TooLong { .. })
        ));
        assert!(parse("36600d").is_ok());
        for bad in ["", "s", "5 parsecs", "-5s", "5x", "999999999999999w"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
