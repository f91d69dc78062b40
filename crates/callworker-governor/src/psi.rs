//! Pressure stall information (PSI) for memory: `/proc/pressure/memory` (whole machine) or
//! `<cgroup>/memory.pressure` (v2 only). Kernel `Documentation/accounting/psi.rst`.
//!
//! ```text
//! some avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! ```
//!
//! `some`: share of wall time in which at least one task was stalled waiting for memory;
//! `full`: share in which all non-idle tasks were. `avgN` are percentages averaged over N
//! seconds; `total` is the stall time in microseconds.

use serde::{Deserialize, Serialize};

use crate::error::{ParseError, excerpt};

/// One PSI file. Percentages are 0–100 as printed by the kernel, not fractions.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Pressure {
    pub some_avg10_pct: f64,
    pub some_avg60_pct: f64,
    pub some_avg300_pct: f64,
    pub some_total_us: u64,
    pub full_avg10_pct: f64,
    pub full_avg60_pct: f64,
    pub full_avg300_pct: f64,
    pub full_total_us: u64,
}

/// Parse a memory PSI file. Both the `some` and the `full` line are required (memory PSI
/// has had both since PSI appeared in 4.20); fields may come in any order, unknown fields
/// are ignored, and each average must be a finite number in 0–100.
pub fn parse_pressure(text: &str) -> Result<Pressure, ParseError> {
    let some = line(text, "some")?;
    let full = line(text, "full")?;
    Ok(Pressure {
        some_avg10_pct: some.avg10_pct,
        some_avg60_pct: some.avg60_pct,
        some_avg300_pct: some.avg300_pct,
        some_total_us: some.total_us,
        full_avg10_pct: full.avg10_pct,
        full_avg60_pct: full.avg60_pct,
        full_avg300_pct: full.avg300_pct,
        full_total_us: full.total_us,
    })
}

struct Line {
    avg10_pct: f64,
    avg60_pct: f64,
    avg300_pct: f64,
    total_us: u64,
}

fn line(text: &str, kind: &'static str) -> Result<Line, ParseError> {
    let fields = text
        .lines()
        .find_map(|line| line.strip_prefix(kind).filter(|rest| rest.starts_with(' ')))
        .ok_or(ParseError::MissingKey { key: kind })?;
    let value = |name: &'static str| {
        fields
            .split_ascii_whitespace()
            .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
            .ok_or(ParseError::MissingKey { key: name })
    };
    let pct = |name: &'static str| -> Result<f64, ParseError> {
        let raw = value(name)?;
        match raw.parse::<f64>() {
            Ok(pct) if (0.0..=100.0).contains(&pct) => Ok(pct),
            _ => Err(ParseError::BadValue { key: name, found: excerpt(raw) }),
        }
    };
    let total_raw = value("total")?;
    let total_us = total_raw
        .parse::<u64>()
        .map_err(|_| ParseError::BadValue { key: "total", found: excerpt(total_raw) })?;
    Ok(Line { avg10_pct: pct("avg10")?, avg60_pct: pct("avg60")?, avg300_pct: pct("avg300")?, total_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_and_missing() {
        let ok = "some avg10=1.00 avg60=0.50 avg300=0.10 total=5\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_pressure(ok).map(|p| p.some_avg10_pct), Ok(1.0));
        assert!(parse_pressure(&ok.replace("1.00", "NaN")).is_err());
        assert!(parse_pressure(&ok.replace("1.00", "100.5")).is_err());
        assert!(parse_pressure(&ok.replace("total=5", "total=-5")).is_err());
        assert_eq!(
            parse_pressure(ok.lines().next().unwrap_or("")),
            Err(ParseError::MissingKey { key: "full" })
        );
        // "someday" is not the "some" line.
        assert_eq!(parse_pressure("someday avg10=1\n"), Err(ParseError::MissingKey { key: "some" }));
    }
}
