//! What a `Complete` may carry: limits the coordinator enforces and the agent
//! respects, in one place so the two can never disagree. An agent that sent a
//! report the coordinator refuses would lose a result; these functions let it
//! shrink or drop the offending part instead.

/// Longest output tail a report may carry, in bytes.
pub const MAX_OUTPUT_TAIL: usize = 64 * 1024;
/// Longest error message a report may carry, in bytes.
pub const MAX_ERROR: usize = 16 * 1024;
/// Largest metrics document a report may carry, in bytes.
pub const MAX_METRICS: usize = 1024 * 1024;

/// Checks a metrics document and returns it parsed: at most [`MAX_METRICS`]
/// bytes of JSON that PostgreSQL's `jsonb` can store (no NUL character in any
/// string or key, numbers within range, valid surrogates).
///
/// # Errors
///
/// What is wrong, ready to follow `metrics_json: `.
pub fn check_metrics(text: &str) -> Result<serde_json::Value, String> {
    if text.len() > MAX_METRICS {
        return Err(format!("larger than {MAX_METRICS} bytes"));
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))?;
    if has_nul(&value) {
        return Err("contains a NUL character, which PostgreSQL cannot store".to_string());
    }
    Ok(value)
}

fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// The last `max` bytes of `text`, cut on a character boundary.
pub fn keep_tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The first `max` bytes of `text`, cut on a character boundary.
pub fn keep_head(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_the_database_cannot_store_are_refused() {
        assert!(check_metrics(r#"{"tests": 3, "passed": 2}"#).is_ok());
        assert!(check_metrics(r#"{"x":"\u0000"}"#).is_err());
        assert!(check_metrics(r#"{"\u0000":1}"#).is_err());
        // An escaped backslash followed by "u0000" is not a NUL.
        assert!(check_metrics(r#"{"x":"\\u0000"}"#).is_ok());
        assert!(check_metrics(r#"{"x":1e400}"#).is_err());
        assert!(check_metrics(r#"{"x":"\ud800"}"#).is_err());
        assert!(check_metrics(&"[".repeat(200)).is_err());
        assert!(check_metrics(&format!("\"{}\"", "m".repeat(MAX_METRICS))).is_err());
    }

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(keep_tail("héllo", 4), "llo");
        assert_eq!(keep_head("héllo", 2), "h");
        assert_eq!(keep_tail("abc", 10), "abc");
    }
}
