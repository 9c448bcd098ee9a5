//! Durations as people type them on a command line: `500ms`, `30s`, `2m`, `1h`,
//! or a plain number of seconds.
//!
//! Small enough that a crate for it would cost more (in build time and review)
//! than it saves; fractions (`1.5s`) are accepted because they cost nothing.

use std::time::Duration;

/// Parses `500ms`, `30s`, `2m`, `1h` or plain seconds (`30`, `0.5`).
///
/// # Errors
///
/// A message naming the input and the accepted forms, ready for clap to show.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use benchq::duration::parse;
///
/// assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
/// assert_eq!(parse("45"), Ok(Duration::from_secs(45)));
/// ```
pub fn parse(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let invalid =
        || format!("invalid duration {input:?}: expected e.g. 500ms, 30s, 2m, 1h or plain seconds");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let seconds_per_unit = match unit.trim_start() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(invalid()),
    };
    // `f64::from_str` would also take "inf", "1e3" or "-1": the split above has
    // already made sure only digits and dots get here.
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(invalid());
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_unit() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse(" 10s "), Ok(Duration::from_secs(10)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1 m"), Ok(Duration::from_secs(60)));
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "", "s", "ms", "-1s", "1d", "1x", "1.2.3s", ".", "1e3", "inf", "NaN", "10 sec", "abc",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }
}
