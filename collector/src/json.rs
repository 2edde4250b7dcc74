//! Strict JSON in one pass: checking a value and writing it without the whitespace between
//! tokens, at once.
//!
//! The collector forwards each accepted event as one compact line of strict JSON, whatever the
//! sender's spacing. Reading a body with `serde_json` and then compacting it read every byte
//! twice (three times for an array); this scanner does both in one pass, with the same verdict
//! as `serde_json` reading a stream of raw values (`tests` checks that on random input): UTF-8
//! strings without raw control characters, the escapes JSON has (`\u` with four hex digits, lone
//! surrogates allowed as serde_json allows them in raw values), JSON's number grammar, `true`,
//! `false`, `null`, and no depth limit — nesting lives on a heap stack, not the call stack.

/// The value is not strict JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A value that was read: where it ends, and how deep it nests (a scalar is 0, `{}` is 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    pub end: usize,
    pub depth: usize,
}

/// Reads JSON values; keeps its nesting stack between values to reuse the allocation.
#[derive(Debug, Default)]
pub struct Scanner {
    /// `{` or `[` for each open container.
    open: Vec<u8>,
}

/// How a byte inside a string is treated.
const PLAIN: u8 = 0;
const QUOTE: u8 = 1;
const BACKSLASH: u8 = 2;
const CONTROL: u8 = 3;
const NON_ASCII: u8 = 4;

static STRING_BYTES: [u8; 256] = {
    let mut table = [PLAIN; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = match byte {
            0x00..=0x1F => CONTROL,
            0x22 => QUOTE,
            0x5C => BACKSLASH,
            0x80..=0xFF => NON_ASCII,
            _ => PLAIN,
        };
        byte += 1;
    }
    table
};

/// JSON's whitespace (no form feed, unlike `u8::is_ascii_whitespace`).
pub fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\n' | b'\r' | b'\t')
}

/// Where the next non-whitespace byte is, from `at`.
pub fn skip_whitespace(text: &[u8], mut at: usize) -> usize {
    while text.get(at).is_some_and(|byte| is_whitespace(*byte)) {
        at += 1;
    }
    at
}

/// What the scanner expects next.
enum Expect {
    Value,
    /// After a value: a comma, or the end of the innermost container.
    Continuation,
}

impl Scanner {
    /// Reads the value that starts at `text[at]` (no whitespace before it) and appends it to
    /// `out` without whitespace between tokens. On error `out` may hold part of it.
    pub fn value(
        &mut self,
        text: &[u8],
        mut at: usize,
        out: &mut Vec<u8>,
    ) -> Result<Scanned, Malformed> {
        self.open.clear();
        let mut depth = 0;
        let mut expect = Expect::Value;
        loop {
            match expect {
                Expect::Value => {
                    let byte = *text.get(at).ok_or(Malformed)?;
                    match byte {
                        b'{' | b'[' => {
                            self.open.push(byte);
                            depth = depth.max(self.open.len());
                            out.push(byte);
                            at = skip_whitespace(text, at + 1);
                            let close = if byte == b'{' { b'}' } else { b']' };
                            if text.get(at) == Some(&close) {
                                self.open.pop();
                                out.push(close);
                                at += 1;
                                expect = Expect::Continuation;
                            } else if byte == b'{' {
                                at = member_name(text, at, out)?;
                            }
                        }
                        b'"' => {
                            at = string(text, at, out)?;
                            expect = Expect::Continuation;
                        }
                        b'-' | b'0'..=b'9' => {
                            at = number(text, at, out)?;
                            expect = Expect::Continuation;
                        }
                        b't' => {
                            at = literal(text, at, b"true", out)?;
                            expect = Expect::Continuation;
                        }
                        b'f' => {
                            at = literal(text, at, b"false", out)?;
                            expect = Expect::Continuation;
                        }
                        b'n' => {
                            at = literal(text, at, b"null", out)?;
                            expect = Expect::Continuation;
                        }
                        _ => return Err(Malformed),
                    }
                }
                Expect::Continuation => {
                    let Some(&container) = self.open.last() else {
                        return Ok(Scanned { end: at, depth });
                    };
                    at = skip_whitespace(text, at);
                    match (container, text.get(at)) {
                        (_, Some(b',')) => {
                            out.push(b',');
                            at = skip_whitespace(text, at + 1);
                            if container == b'{' {
                                at = member_name(text, at, out)?;
                            }
                            expect = Expect::Value;
                        }
                        (b'{', Some(b'}')) | (b'[', Some(b']')) => {
                            out.push(text[at]);
                            self.open.pop();
                            at += 1;
                        }
                        _ => return Err(Malformed),
                    }
                }
            }
        }
    }
}

/// Whether none of eight bytes is a quote, a backslash, a control character or non-ASCII. The
/// word-at-a-time tests: `(w - 0x01..01) & !w & 0x80..80` is non-zero exactly when some byte of
/// `w` is zero (borrows can mark bytes above a zero byte too, never a word without one), so a
/// byte equal to `c` shows as a zero byte of `w ^ (c × 0x01..01)`; with `0x20` instead of `0x01`
/// it finds a byte below 0x20 among ASCII bytes, and the top bits find non-ASCII ones.
fn all_plain(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let has_zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH_BITS;
    let quote = has_zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero_byte(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH_BITS;
    let non_ascii = word & HIGH_BITS;
    quote | backslash | control | non_ascii == 0
}

/// `"name"` `:` and the whitespace up to the member's value.
fn member_name(text: &[u8], at: usize, out: &mut Vec<u8>) -> Result<usize, Malformed> {
    if text.get(at) != Some(&b'"') {
        return Err(Malformed);
    }
    let at = skip_whitespace(text, string(text, at, out)?);
    if text.get(at) != Some(&b':') {
        return Err(Malformed);
    }
    out.push(b':');
    Ok(skip_whitespace(text, at + 1))
}

/// A string from its opening quote at `text[at]`; returns where it ends. Copied whole: strings
/// are most of an event's bytes.
fn string(text: &[u8], at: usize, out: &mut Vec<u8>) -> Result<usize, Malformed> {
    let mut end = at + 1;
    let mut non_ascii = false;
    loop {
        // Eight plain bytes at a time, then one byte at a time past whatever is not plain.
        while let Some(chunk) = text.get(end..end + 8) {
            let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
                break;
            };
            if !all_plain(u64::from_le_bytes(bytes)) {
                break;
            }
            end += 8;
        }
        let byte = *text.get(end).ok_or(Malformed)?;
        match STRING_BYTES[usize::from(byte)] {
            PLAIN => end += 1,
            QUOTE => break,
            BACKSLASH => {
                end += 1;
                match text.get(end) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => end += 1,
                    Some(b'u') => {
                        let hex = text.get(end + 1..end + 5).ok_or(Malformed)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err(Malformed);
                        }
                        end += 5;
                    }
                    _ => return Err(Malformed),
                }
            }
            NON_ASCII => {
                non_ascii = true;
                end += 1;
            }
            _ => return Err(Malformed),
        }
    }
    let body = &text[at + 1..end];
    if non_ascii && std::str::from_utf8(body).is_err() {
        return Err(Malformed);
    }
    out.extend_from_slice(&text[at..=end]);
    Ok(end + 1)
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?` from `text[at]`.
fn number(text: &[u8], at: usize, out: &mut Vec<u8>) -> Result<usize, Malformed> {
    let digits = |from: usize| {
        let count = text.get(from..).map_or(0, |tail| {
            tail.iter().take_while(|b| b.is_ascii_digit()).count()
        });
        if count == 0 {
            Err(Malformed)
        } else {
            Ok(from + count)
        }
    };
    let mut end = at + usize::from(text[at] == b'-');
    end = match text.get(end) {
        Some(b'0') => end + 1,
        Some(b'1'..=b'9') => digits(end)?,
        _ => return Err(Malformed),
    };
    if text.get(end) == Some(&b'.') {
        end = digits(end + 1)?;
    }
    if matches!(text.get(end), Some(b'e' | b'E')) {
        end += 1;
        if matches!(text.get(end), Some(b'+' | b'-')) {
            end += 1;
        }
        end = digits(end)?;
    }
    out.extend_from_slice(&text[at..end]);
    Ok(end)
}

fn literal(text: &[u8], at: usize, word: &[u8], out: &mut Vec<u8>) -> Result<usize, Malformed> {
    let end = at + word.len();
    if text.get(at..end) != Some(word) {
        return Err(Malformed);
    }
    out.extend_from_slice(word);
    Ok(end)
}

/// Whether a scalar at the top level of a stream ends where serde_json's stream reader says a
/// value that does not delimit itself may end.
pub fn may_end_top_level_scalar(next: Option<&u8>) -> bool {
    match next {
        None => true,
        Some(byte) => {
            is_whitespace(*byte) || matches!(byte, b'"' | b'[' | b']' | b'{' | b'}' | b',' | b':')
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan(text: &[u8]) -> Result<(Scanned, Vec<u8>), Malformed> {
        let mut out = Vec::new();
        let at = skip_whitespace(text, 0);
        Scanner::default()
            .value(text, at, &mut out)
            .map(|scanned| (scanned, out))
    }

    /// serde_json's verdict on the first value of `text`, read the way the collector read
    /// bodies before this scanner: one raw value from a stream.
    fn serde_first(text: &[u8]) -> Option<usize> {
        let mut values =
            serde_json::Deserializer::from_slice(text).into_iter::<&serde_json::value::RawValue>();
        values.next()?.ok()?;
        Some(values.byte_offset())
    }

    /// Our verdict in the same terms: the value's end, with serde_json's rule for scalars.
    fn ours_first(text: &[u8]) -> Option<usize> {
        let at = skip_whitespace(text, 0);
        let first = *text.get(at)?;
        let (scanned, _) = scan(text).ok()?;
        let delimits_itself = matches!(first, b'{' | b'[' | b'"');
        (delimits_itself || may_end_top_level_scalar(text.get(scanned.end))).then_some(scanned.end)
    }

    #[test]
    fn compacts_and_keeps_strings() {
        let (scanned, out) =
            scan(b"{ \"a b\" : [ 1 , -2.5e+3 , true , null ] ,\n\"c\":\"\\\" x\" }")
                .expect("valid");
        assert_eq!(out, b"{\"a b\":[1,-2.5e+3,true,null],\"c\":\"\\\" x\"}");
        assert_eq!(scanned.depth, 2);
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        for text in [
            "{",
            "[1,]",
            "{\"a\"}",
            "{\"a\":}",
            "{1:2}",
            "01",
            "-",
            "1.",
            "1e",
            "+1",
            ".5",
            "tru",
            "nul",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"a\u{1}\"",
            "[1 2]",
            "{\"a\":1,}",
            "NaN",
            "\"open",
        ] {
            assert_eq!(ours_first(text.as_bytes()), None, "{text}");
            assert_eq!(serde_first(text.as_bytes()), None, "{text}");
        }
        assert!(scan(b"\"\xFF\"").is_err());
    }

    #[test]
    fn words_are_plain_only_without_special_bytes() {
        for byte in 0..=255u8 {
            for position in 0..8 {
                let mut word = *b"abcdefgh";
                word[position] = byte;
                let plain = (0x20..0x80).contains(&byte) && byte != b'"' && byte != b'\\';
                assert_eq!(
                    all_plain(u64::from_le_bytes(word)),
                    plain,
                    "{byte:#x} at {position}"
                );
            }
        }
    }

    #[test]
    fn deep_nesting_does_not_use_the_call_stack() {
        let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        let (scanned, out) = scan(deep.as_bytes()).expect("valid");
        assert_eq!(scanned.depth, 200_000);
        assert_eq!(out.len(), deep.len());
    }

    /// Random JSON-ish text: valid values, then bytes changed, dropped or added.
    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            any::<i32>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| n.to_string()),
            "\"[ a\\\\\"é\\u{1}]{0,4}\"",
            "-?[0-9]{1,3}(\\.[0-9]{0,2})?([eE][+-]?[0-9]{0,2})?",
            "\"(\\\\[\"\\\\/bfnrtu]|\\\\u[0-9a-fA-F]{4}|[a-z ])*\"",
        ];
        let value = leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                (proptest::collection::vec(inner.clone(), 0..4), "[ \n]{0,2}")
                    .prop_map(|(items, ws)| format!("[{ws}{}]", items.join(&format!(",{ws}")))),
                (
                    proptest::collection::vec(("\"[a-z]{0,2}\"", inner), 0..4),
                    "[ \t]{0,2}"
                )
                    .prop_map(|(members, ws)| {
                        let members: Vec<String> = members
                            .into_iter()
                            .map(|(name, value)| format!("{name}{ws}:{ws}{value}"))
                            .collect();
                        format!("{{{ws}{}{ws}}}", members.join(","))
                    }),
            ]
        });
        (
            value,
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..3),
            "[ \n]{0,2}[a-z0-9\\[\\]{}\",:]{0,2}",
        )
            .prop_map(|(value, edits, tail)| {
                let mut bytes = value.into_bytes();
                for (index, byte, kind) in edits {
                    if bytes.is_empty() {
                        break;
                    }
                    let at = index.index(bytes.len());
                    match kind {
                        0 => bytes[at] = byte,
                        1 => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, byte),
                    }
                }
                bytes.extend_from_slice(tail.as_bytes());
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

        /// Same verdict and same end as serde_json on valid and broken text alike, and the
        /// compact form is the same value.
        #[test]
        fn agrees_with_serde_json(text in jsonish()) {
            prop_assert_eq!(ours_first(&text), serde_first(&text), "{}", String::from_utf8_lossy(&text));
            if let (Some(_), Ok((_, out))) = (serde_first(&text), scan(&text)) {
                let original: serde_json::Value = serde_json::Deserializer::from_slice(&text)
                    .into_iter()
                    .next()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let compact: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
                prop_assert_eq!(compact, original);
                prop_assert!(!out.iter().any(|b| matches!(b, b'\n' | b'\r' | b'\t')));
            }
        }
    }
}
