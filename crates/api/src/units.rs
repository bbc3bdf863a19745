//! Units as docker reads and writes them: Go-style durations (`1m30s`, `500ms`), byte sizes
//! (`50M`, `1GiB`, binary multiples as docker's `RAMInBytes`) and wall-clock timestamps.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

/// A duration written the way Go's `time.Duration` prints it, and parsed the way Go's
/// `time.ParseDuration` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub StdDuration);

/// A duration or size that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct UnitError {
    /// "duration" or "size".
    pub what: &'static str,
    /// The text given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Duration {
    /// From whole milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(StdDuration::from_millis(ms))
    }
    /// From whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(StdDuration::from_secs(s))
    }
    /// Whole milliseconds, saturating.
    pub fn as_millis(&self) -> u64 {
        self.0.as_millis().min(u64::MAX as u128) as u64
    }
    /// True for a zero duration.
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Duration {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let err = |reason| UnitError {
            what: "duration",
            value: s.to_owned(),
            reason,
        };
        let body = s.strip_prefix('+').unwrap_or(s);
        if body.starts_with('-') {
            return Err(err("negative durations are not allowed"));
        }
        if body == "0" {
            return Ok(Self::default());
        }
        if body.is_empty() {
            return Err(err("empty"));
        }
        let mut total: f64 = 0.0;
        let mut rest = body;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit (use ns, us, ms, s, m or h)"))?;
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let number: f64 = rest[..num_len].parse().map_err(|_| err("bad number"))?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let nanos_per = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" | "μs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                _ => return Err(err("unknown unit (use ns, us, ms, s, m or h)")),
            };
            total += number * nanos_per;
            rest = &rest[unit_len..];
        }
        if total > u64::MAX as f64 {
            return Err(err("too large"));
        }
        Ok(Self(StdDuration::from_nanos(total.round() as u64)))
    }
}

/// Writes `value` with up to `digits` fractional digits, trailing zeros removed.
fn write_fraction(out: &mut String, whole: u64, frac: u64, digits: u32) {
    out.push_str(&whole.to_string());
    if frac != 0 {
        let s = format!("{:0width$}", frac, width = digits as usize);
        out.push('.');
        out.push_str(s.trim_end_matches('0'));
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos() as u64;
        let mut out = String::new();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000 {
            out = format!("{nanos}ns");
        } else if nanos < 1_000_000 {
            write_fraction(&mut out, nanos / 1_000, nanos % 1_000, 3);
            out.push_str("µs");
        } else if nanos < 1_000_000_000 {
            write_fraction(&mut out, nanos / 1_000_000, nanos % 1_000_000, 6);
            out.push_str("ms");
        } else {
            let secs = nanos / 1_000_000_000;
            let frac = nanos % 1_000_000_000;
            let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
            if h > 0 {
                out.push_str(&format!("{h}h"));
            }
            if h > 0 || m > 0 {
                out.push_str(&format!("{m}m"));
            }
            write_fraction(&mut out, s, frac, 9);
            out.push('s');
        }
        f.write_str(&out)
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a byte size as docker's `RAMInBytes`: a number, an optional unit among k, m, g, t, p
/// (binary multiples, any case), an optional `i` and an optional `b`. `50M` is 52428800.
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    let err = |reason| UnitError {
        what: "size",
        value: s.to_owned(),
        reason,
    };
    let t = s.trim();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    if num_len == 0 {
        return Err(err("expected a number"));
    }
    let number: f64 = t[..num_len].parse().map_err(|_| err("bad number"))?;
    let mut unit = t[num_len..].trim_start().to_ascii_lowercase();
    if unit.ends_with('b') {
        unit.pop();
    }
    if unit.len() == 2 && unit.ends_with('i') {
        unit.pop();
    }
    let mult: f64 = match unit.as_str() {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024f64.powi(2),
        "g" => 1024f64.powi(3),
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return Err(err("unknown unit (use b, k, m, g, t or p)")),
    };
    let bytes = number * mult;
    if bytes > u64::MAX as f64 {
        return Err(err("too large"));
    }
    Ok(bytes as u64)
}

/// Milliseconds since the Unix epoch. Set by whoever proposes a change, so that applying the
/// change is deterministic.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// This timestamp moved later by `d`.
    pub fn after(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.as_millis()))
    }
    /// How long from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Duration {
        s.parse().unwrap()
    }

    #[test]
    fn durations_read_as_go_reads_them() {
        assert_eq!(d("1m30s").as_millis(), 90_000);
        assert_eq!(d("500ms").as_millis(), 500);
        assert_eq!(d("1.5h").as_millis(), 5_400_000);
        assert_eq!(d("0").as_millis(), 0);
        assert_eq!(d("2h45m").as_millis(), 9_900_000);
        assert!("10".parse::<Duration>().is_err());
        assert!("10x".parse::<Duration>().is_err());
        assert!("-1s".parse::<Duration>().is_err());
        assert!("".parse::<Duration>().is_err());
    }

    #[test]
    fn durations_print_as_go_prints_them() {
        for (input, printed) in [
            ("120s", "2m0s"),
            ("60s", "1m0s"),
            ("90s", "1m30s"),
            ("10s", "10s"),
            ("500ms", "500ms"),
            ("1.5s", "1.5s"),
            ("3600s", "1h0m0s"),
            ("0s", "0s"),
            ("1500us", "1.5ms"),
        ] {
            assert_eq!(d(input).to_string(), printed, "{input}");
        }
    }

    #[test]
    fn sizes_read_as_docker_reads_them() {
        assert_eq!(parse_bytes("50M").unwrap(), 52_428_800);
        assert_eq!(parse_bytes("20M").unwrap(), 20_971_520);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1_073_741_824);
        assert_eq!(parse_bytes("1gb").unwrap(), 1_073_741_824);
        assert_eq!(parse_bytes("128k").unwrap(), 131_072);
        assert_eq!(parse_bytes("10000").unwrap(), 10_000);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5X").is_err());
    }
}
