//! Keeping the end of a run's output.
//!
//! A scenario can print gigabytes; the coordinator stores at most 64 KiB per
//! attempt, and the end is where the verdict and the stack trace are. So the
//! agent keeps only a sliding window of bytes in memory while the run goes on,
//! and turns it into text once, at the end.

/// The most output kept per run, in bytes: [`benchq::report::MAX_OUTPUT_TAIL`],
/// what the coordinator accepts in `CompleteRequest.output_tail`; kept under
/// this name for existing users.
pub const OUTPUT_TAIL_MAX: usize = benchq::report::MAX_OUTPUT_TAIL;

/// A window over the last bytes written to it.
///
/// Bytes are kept raw (a child may print anything) and trimmed in amortised
/// batches: the buffer may grow to twice the limit before the front is cut.
#[derive(Debug)]
pub struct Tail {
    buf: Vec<u8>,
    max: usize,
}

impl Default for Tail {
    fn default() -> Self {
        Tail::new(OUTPUT_TAIL_MAX)
    }
}

impl Tail {
    /// A window of `max` bytes.
    pub fn new(max: usize) -> Self {
        Tail {
            buf: Vec::new(),
            max,
        }
    }

    /// Appends `bytes`, forgetting what falls out of the window.
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= self.max {
            self.buf.clear();
            self.buf.extend_from_slice(&bytes[bytes.len() - self.max..]);
            return;
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * self.max {
            let cut = self.buf.len() - self.max;
            self.buf.drain(..cut);
        }
    }

    /// The window as text: at most `max` bytes, cut on a character boundary,
    /// invalid UTF-8 replaced.
    pub fn to_text(&self) -> String {
        let start = self.buf.len().saturating_sub(self.max);
        let mut bytes = &self.buf[start..];
        // Where the window starts inside a multi-byte character, skip the rest
        // of it rather than show a replacement character for half of it.
        if start > 0 {
            let skip = bytes
                .iter()
                .take(3)
                .take_while(|b| (**b & 0b1100_0000) == 0b1000_0000)
                .count();
            bytes = &bytes[skip..];
        }
        truncate_front(String::from_utf8_lossy(bytes).into_owned(), self.max)
    }
}

/// Cuts `text` to at most `max` bytes by dropping its beginning, on a
/// character boundary.
pub fn truncate_front(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    benchq::report::keep_tail(&text, max).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_end() {
        let mut t = Tail::new(10);
        t.push(b"hello ");
        t.push(b"world, ");
        t.push(b"bye");
        assert_eq!(t.to_text(), "world, bye");
        for _ in 0..100 {
            t.push(b"abc");
        }
        assert_eq!(t.to_text(), "cabcabcabc");
        assert!(t.buf.len() <= 20);
        t.push(&[b'x'; 25]);
        assert_eq!(t.to_text(), "xxxxxxxxxx");
    }

    #[test]
    fn cuts_on_char_boundary() {
        let mut t = Tail::new(4);
        t.push("aé€".as_bytes()); // 1 + 2 + 3 bytes: the window starts inside "é"
        assert_eq!(t.to_text(), "€");
        let mut t = Tail::new(5);
        t.push("aé€".as_bytes());
        assert_eq!(t.to_text(), "é€");
        assert_eq!(truncate_front("aé€".into(), 4), "€");
        assert_eq!(truncate_front("aé€".into(), 5), "é€");
        assert_eq!(truncate_front("aé€".into(), 6), "aé€");
        assert_eq!(truncate_front("€€".into(), 4), "€");
    }

    #[test]
    fn invalid_utf8_is_replaced_within_the_limit() {
        let mut t = Tail::new(4);
        t.push(&[0xff, 0xff, 0xff, 0xff]);
        let text = t.to_text();
        assert!(text.len() <= 4, "{text:?}");
        assert!(text.starts_with('\u{fffd}'));
    }
}
