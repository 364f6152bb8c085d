//! Typed parsers for the CLI's seconds and rates. A value that no clock can add (NaN, infinity,
//! 1e300 seconds, one message every 1e300 seconds) is refused when the arguments are read, with
//! a message that names the option's bounds, instead of panicking deep in the run when a
//! `Duration` or an `Instant` overflows.

/// The longest span an option may ask for: ten years, beyond any run, and far below what an
/// `Instant` or the nanosecond clock of a simulation can add.
pub const MAX_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;
/// The fastest rate an option may ask for: one a nanosecond.
pub const MAX_RATE: f64 = 1e9;

/// Seconds, from 0 to [`MAX_SECONDS`].
pub fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(0.0..=MAX_SECONDS).contains(&v) {
        return Err(format!(
            "`{s}` seconds is out of range: from 0 to {MAX_SECONDS} (ten years)"
        ));
    }
    Ok(v)
}

/// A rate per second, from one every [`MAX_SECONDS`] to [`MAX_RATE`].
pub fn rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number per second"))?;
    if !(1.0 / MAX_SECONDS..=MAX_RATE).contains(&v) {
        return Err(format!(
            "`{s}` per second is out of range: from one every ten years to {MAX_RATE}"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_seconds_and_rates_are_refused() {
        for bad in [
            "nan", "NaN", "inf", "-inf", "1e300", "1e19", "-1", "", "5s", "0x10",
        ] {
            assert!(seconds(bad).is_err(), "seconds({bad:?})");
        }
        for bad in ["nan", "inf", "1e-300", "0", "-3", "1e10", "fast"] {
            assert!(rate(bad).is_err(), "rate({bad:?})");
        }
        assert_eq!(seconds("0"), Ok(0.0));
        assert_eq!(seconds(" 2.5 "), Ok(2.5));
        assert_eq!(rate("100000"), Ok(100_000.0));
        assert_eq!(rate("0.5"), Ok(0.5));
    }
}
