//! From a request body to accepted events (compact NDJSON lines) and counted rejections.
//!
//! A body holds one event object, a JSON array of them, or several objects one after another
//! (NDJSON). The body is split into values by a strict JSON scanner ([`crate::json`]: UTF-8, no
//! raw control characters in strings, no `NaN`; serde_json's verdict, checked by a property
//! test) which writes each event object without its whitespace as it reads it, and every event
//! is then judged by the aggregator's own parser, [`parse_record`], so that the collector
//! accepts exactly what the aggregator counts — plus the guarantee that what goes on the stream
//! is strict JSON, one event per line, whatever reads the raw archive later.
//!
//! Each accepted object is forwarded with all of its fields, only with the whitespace between
//! tokens removed.
//!
//! A value that is not valid JSON is counted once as `malformed_json`, and reading resumes on the
//! next line, the way the aggregator reads NDJSON.

use clickheatmap_model::event::{
    ClickEvent, Limits, RecordVisitor, RejectReason, Rejection, parse_record,
};

use crate::json::{Malformed, Scanned, Scanner, may_end_top_level_scalar, skip_whitespace};

const REASONS: usize = RejectReason::ALL.len();

/// The outcome of one body: accepted events as NDJSON lines, and rejections by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Accepted events, each a compact JSON object followed by `\n`.
    lines: Vec<u8>,
    /// Where each line ends in `lines` (after its `\n`).
    ends: Vec<usize>,
    rejected: [u64; REASONS],
}

impl Batch {
    /// Number of accepted events.
    pub fn accepted(&self) -> usize {
        self.ends.len()
    }

    /// Number of rejected events (or unreadable stretches).
    pub fn rejected(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// Accepted plus rejected.
    pub fn total(&self) -> u64 {
        self.accepted() as u64 + self.rejected()
    }

    /// Rejections by reason, only reasons that occurred, in [`RejectReason::ALL`] order.
    pub fn rejections(&self) -> impl Iterator<Item = (RejectReason, u64)> + '_ {
        RejectReason::ALL
            .iter()
            .map(|reason| (*reason, self.rejected[reason.index()]))
            .filter(|(_, n)| *n > 0)
    }

    /// Bytes of the accepted events' NDJSON.
    pub fn bytes(&self) -> usize {
        self.lines.len()
    }

    /// The accepted events, each a line ending in `\n`.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let line = &self.lines[start..end];
            start = end;
            line
        })
    }

    fn reject(&mut self, reason: RejectReason) {
        self.rejected[reason.index()] += 1;
    }

    /// Where the batch stands, to return to if the rest of a value turns out to be malformed.
    fn mark(&self) -> Mark {
        Mark {
            lines: self.lines.len(),
            ends: self.ends.len(),
            rejected: self.rejected,
        }
    }

    fn rollback(&mut self, mark: Mark) {
        self.lines.truncate(mark.lines);
        self.ends.truncate(mark.ends);
        self.rejected = mark.rejected;
    }
}

struct Mark {
    lines: usize,
    ends: usize,
    rejected: [u64; REASONS],
}

/// Splits `body` into events, judges each with the aggregator's parser, and returns the accepted
/// ones as compact NDJSON along with the rejection counts.
pub fn split_events(body: &[u8], limits: &Limits) -> Batch {
    let mut reader = Reader {
        // A byte order mark is harmless; the aggregator skips it too.
        text: body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body),
        // Each object is judged alone, so the record limit is the body limit, enforced before.
        limits: Limits {
            max_record_bytes: usize::MAX,
            ..*limits
        },
        scanner: Scanner::default(),
        scratch: Vec::new(),
        // Accepted events take at most the body's bytes (and the lines' ends about one usize per
        // event of a hundred bytes or more): no regrowing on the way.
        batch: Batch {
            lines: Vec::with_capacity(body.len() + 1),
            ends: Vec::with_capacity(body.len() / 128 + 1),
            rejected: [0; REASONS],
        },
    };
    let text = reader.text;
    let mut at = skip_whitespace(text, 0);
    while at < text.len() {
        let mark = reader.batch.mark();
        at = match reader.top_level_value(at) {
            Ok(end) => end,
            Err(Malformed) => {
                // A broken value counts once (whatever of it was read is taken back), and
                // reading resumes on the line after the one it starts on.
                reader.batch.rollback(mark);
                reader.batch.reject(RejectReason::MalformedJson);
                memchr::memchr(b'\n', &text[at..]).map_or(text.len(), |i| at + i + 1)
            }
        };
        at = skip_whitespace(text, at);
    }
    reader.batch
}

/// One body being read.
struct Reader<'a> {
    text: &'a [u8],
    limits: Limits,
    scanner: Scanner,
    /// Where values that are not events are scanned to.
    scratch: Vec<u8>,
    batch: Batch,
}

impl Reader<'_> {
    /// Reads the value at `text[at]`: an event, an array of events, or something else (not an
    /// object); returns where it ends.
    fn top_level_value(&mut self, at: usize) -> Result<usize, Malformed> {
        match self.text[at] {
            b'[' => {
                let mut at = skip_whitespace(self.text, at + 1);
                if self.text.get(at) == Some(&b']') {
                    return Ok(at + 1);
                }
                loop {
                    at = skip_whitespace(self.text, self.array_element(at)?);
                    match self.text.get(at) {
                        Some(b',') => at = skip_whitespace(self.text, at + 1),
                        Some(b']') => return Ok(at + 1),
                        _ => return Err(Malformed),
                    }
                }
            }
            b'{' => self.event(at),
            _ => {
                let scanned = self.not_an_event(at)?;
                let delimits_itself = self.text[at] == b'"';
                if !delimits_itself && !may_end_top_level_scalar(self.text.get(scanned.end)) {
                    return Err(Malformed);
                }
                Ok(scanned.end)
            }
        }
    }

    fn array_element(&mut self, at: usize) -> Result<usize, Malformed> {
        if self.text.get(at) == Some(&b'{') {
            return self.event(at);
        }
        // Arrays hold events; a nested array or a scalar is not one.
        Ok(self.not_an_event(at)?.end)
    }

    /// Reads a value that is not an event object (it still has to be strict JSON) and counts it.
    fn not_an_event(&mut self, at: usize) -> Result<Scanned, Malformed> {
        self.scratch.clear();
        let scanned = self.scanner.value(self.text, at, &mut self.scratch)?;
        self.batch.reject(RejectReason::NotAnObject);
        Ok(scanned)
    }

    /// Reads one event object at `text[at]` into the batch's lines (compact) and judges it with
    /// the aggregator's parser.
    fn event(&mut self, at: usize) -> Result<usize, Malformed> {
        let batch = &mut self.batch;
        let start = batch.lines.len();
        let scanned = self.scanner.value(self.text, at, &mut batch.lines)?;
        let verdict = if scanned.depth > MAX_DEPTH {
            Some(RejectReason::MalformedJson)
        } else {
            let mut outcome = Outcome::default();
            parse_record(&self.text[at..scanned.end], &self.limits, &mut outcome);
            match (outcome.clicks, outcome.first_rejection) {
                (1, None) => None,
                (_, Some(reason)) => Some(reason),
                // One object is one event; anything else means the two parsers disagree on the
                // syntax.
                (_, None) => Some(RejectReason::MalformedJson),
            }
        };
        match verdict {
            None => {
                batch.lines.push(b'\n');
                batch.ends.push(batch.lines.len());
            }
            Some(reason) => {
                batch.lines.truncate(start);
                batch.reject(reason);
            }
        }
        Ok(scanned.end)
    }
}

/// What the parser said about one object.
#[derive(Default)]
struct Outcome {
    clicks: u32,
    first_rejection: Option<RejectReason>,
}

impl<'a> RecordVisitor<'a> for Outcome {
    fn click(&mut self, _event: ClickEvent<'a>) {
        self.clicks += 1;
    }

    fn reject(&mut self, rejection: Rejection<'a>) {
        self.first_rejection.get_or_insert(rejection.reason);
    }
}

/// Deepest nesting forwarded (the event object itself is level 1). The aggregator's parser skips
/// nested values with a heap stack and neither does the collector's JSON scanner, so without this bound a 64 KiB event could carry 32,000 levels to whatever reads the
/// stream next with a recursive parser. Deeper events count as `malformed_json`.
pub const MAX_DEPTH: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"event_type":"click","event_time":"2025-12-28T10:51:06.968Z","event_time_ms":1766919066968,"page_id":"demo-page","x":412.5,"y":233,"viewport_width":1280,"viewport_height":720,"dpr":2,"user_agent":"Mozilla/5.0 (X11) \"q\" \\ x"}"#;

    fn split(body: &str) -> Batch {
        split_events(body.as_bytes(), &Limits::default())
    }

    fn reasons(batch: &Batch) -> Vec<(&'static str, u64)> {
        batch.rejections().map(|(r, n)| (r.label(), n)).collect()
    }

    #[test]
    fn one_object_an_array_and_ndjson() {
        let one = split(EVENT);
        assert_eq!((one.accepted(), one.rejected()), (1, 0));
        assert_eq!(one.lines().next().unwrap(), format!("{EVENT}\n").as_bytes());
        let array = split(&format!("[{EVENT}, {EVENT}]"));
        assert_eq!((array.accepted(), array.rejected()), (2, 0));
        let ndjson = split(&format!("{EVENT}\n{EVENT}\r\n\n{EVENT}\n"));
        assert_eq!((ndjson.accepted(), ndjson.rejected()), (3, 0));
        let bom = split(&format!("\u{feff}{EVENT}"));
        assert_eq!(bom.accepted(), 1);
    }

    #[test]
    fn pretty_printed_events_become_one_line_with_every_field() {
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(EVENT).unwrap(),
        )
        .unwrap();
        let batch = split(&pretty);
        assert_eq!(batch.accepted(), 1);
        let line = batch.lines().next().unwrap();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let back: serde_json::Value = serde_json::from_slice(line).unwrap();
        let original: serde_json::Value = serde_json::from_str(EVENT).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn strings_keep_their_spaces_and_escapes() {
        let event = EVENT.replace("Mozilla/5.0", "spaces  \\n\\t \\\" {[\\u0041");
        let batch = split(&event);
        assert_eq!(batch.accepted(), 1);
        assert_eq!(
            batch.lines().next().unwrap(),
            format!("{event}\n").as_bytes()
        );
    }

    #[test]
    fn reasons_come_from_the_aggregator_parser() {
        let wrong = EVENT.replace("\"x\":412.5", "\"x\":\"412.5\"");
        let scroll = EVENT.replace("\"click\"", "\"scroll\"");
        let batch = split(&format!("[{wrong},{scroll},{EVENT},1,[{EVENT}]]"));
        assert_eq!(batch.accepted(), 1);
        assert_eq!(
            reasons(&batch),
            vec![("not_an_object", 2), ("wrong_type", 1), ("not_a_click", 1)]
        );
    }

    #[test]
    fn a_broken_line_costs_one_rejection_and_not_its_neighbours() {
        let body =
            format!("{EVENT}\n{{\"event_type\":\"click\",\"x\":\n{EVENT}\n{EVENT} oops\n{EVENT}");
        let batch = split(&body);
        assert_eq!(batch.accepted(), 4);
        assert_eq!(reasons(&batch), vec![("malformed_json", 2)]);
    }

    #[test]
    fn what_is_not_strict_json_is_malformed() {
        for body in [
            "{not json",
            "{\"x\":NaN}",
            "[1 2]",
            "\"unterminated",
            &EVENT.replace("demo-page", "raw\u{1}control"),
            &EVENT.replace("\"dpr\":2", "\"dpr\":Infinity"),
            &EVENT.replace(
                "\"dpr\":2",
                &format!("\"dpr\":{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH)),
            ),
        ] {
            let batch = split(body);
            assert_eq!(batch.accepted(), 0, "{}", &body[..body.len().min(80)]);
            assert_eq!(reasons(&batch), vec![("malformed_json", 1)]);
        }
        let nested = EVENT.replace(
            "\"dpr\":2",
            &format!(
                "\"dpr\":{}{}",
                "[".repeat(MAX_DEPTH - 1),
                "]".repeat(MAX_DEPTH - 1)
            ),
        );
        assert_eq!(split(&nested).accepted(), 1);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let batch = split(&deep);
        assert_eq!((batch.accepted(), batch.rejected()), (0, 1));
        let mut invalid_utf8 = EVENT.as_bytes().to_vec();
        let at = EVENT.find("Mozilla").unwrap();
        invalid_utf8[at] = 0xFF;
        let batch = split_events(&invalid_utf8, &Limits::default());
        assert_eq!((batch.accepted(), batch.rejected()), (0, 1));
    }

    #[test]
    fn empty_bodies_have_no_events() {
        for body in ["", "  \n", "[]", "\u{feff}"] {
            assert_eq!(split(body).total(), 0, "{body:?}");
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            // Strings with quotes, backslashes, spaces, control characters and non-ASCII.
            proptest::string::string_regex("[ a-z\"\\\\\\n\\t\\u{1}é{}\\[\\],:]{0,12}")
                .unwrap_or_else(|_| unreachable!())
                .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z \"]{0,4}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256, failure_persistence: None, ..Default::default()
        })]

        /// Whatever whitespace the sender used, the forwarded line is the event's compact JSON,
        /// every field kept as it was.
        #[test]
        fn forwarded_lines_are_the_compact_event(extra in json_value(), pretty in proptest::bool::ANY) {
            let mut event: serde_json::Value = serde_json::from_str(EVENT).unwrap();
            event["extra"] = extra;
            let body = if pretty {
                serde_json::to_string_pretty(&event).unwrap()
            } else {
                serde_json::to_string(&event).unwrap()
            };
            let batch = split(&format!("[{body}]"));
            proptest::prop_assert_eq!(batch.accepted(), 1);
            let line = batch.lines().next().unwrap();
            proptest::prop_assert_eq!(
                std::str::from_utf8(line).unwrap(),
                format!("{}\n", serde_json::to_string(&event).unwrap())
            );
        }
    }

    /// The collector's reading before its own scanner, with serde_json: values from a stream,
    /// an array's elements read again, each event compacted byte by byte. Kept as the reference
    /// the scanner-based reader must agree with.
    fn reference_split(body: &[u8]) -> (Vec<Vec<u8>>, Vec<(&'static str, u64)>) {
        use serde_json::value::RawValue;
        let mut lines = Vec::new();
        let mut rejected = std::collections::BTreeMap::new();
        let mut reject = |reason: RejectReason| *rejected.entry(reason.label()).or_insert(0) += 1;
        let limits = Limits {
            max_record_bytes: usize::MAX,
            ..Limits::default()
        };
        let mut judge = |text: &str, reject: &mut dyn FnMut(RejectReason)| {
            let mut outcome = Outcome::default();
            parse_record(text.as_bytes(), &limits, &mut outcome);
            match (outcome.clicks, outcome.first_rejection) {
                (1, None) => {
                    let value: serde_json::Value = serde_json::from_str(text).unwrap();
                    if depth(&value) > MAX_DEPTH {
                        reject(RejectReason::MalformedJson);
                    } else {
                        lines.push(compact_reference(text));
                    }
                }
                (_, Some(reason)) => reject(reason),
                (_, None) => reject(RejectReason::MalformedJson),
            }
        };
        let mut rest = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        'body: loop {
            let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<&RawValue>();
            loop {
                match values.next() {
                    None => break 'body,
                    Some(Ok(value)) => match value.get().as_bytes()[0] {
                        b'{' => judge(value.get(), &mut reject),
                        b'[' => {
                            for element in
                                serde_json::from_str::<Vec<&RawValue>>(value.get()).unwrap()
                            {
                                if element.get().starts_with('{') {
                                    judge(element.get(), &mut reject);
                                } else {
                                    reject(RejectReason::NotAnObject);
                                }
                            }
                        }
                        _ => reject(RejectReason::NotAnObject),
                    },
                    Some(Err(_)) => {
                        let good = values.byte_offset();
                        let Some(start) = rest[good..]
                            .iter()
                            .position(|b| !crate::json::is_whitespace(*b))
                            .map(|offset| good + offset)
                        else {
                            break 'body;
                        };
                        reject(RejectReason::MalformedJson);
                        let resume = rest[start..]
                            .iter()
                            .position(|b| *b == b'\n')
                            .map_or(rest.len(), |i| start + i + 1);
                        rest = &rest[resume..];
                        continue 'body;
                    }
                }
            }
        }
        (lines, rejected.into_iter().collect())
    }

    fn depth(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(members) => {
                1 + members.values().map(depth).max().unwrap_or(0)
            }
            _ => 0,
        }
    }

    fn compact_reference(text: &str) -> Vec<u8> {
        let (mut out, mut in_string, mut escaped) = (Vec::new(), false, false);
        for &byte in text.as_bytes() {
            if in_string {
                out.push(byte);
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == b'"' {
                    in_string = false;
                }
            } else if !crate::json::is_whitespace(byte) {
                in_string = byte == b'"';
                out.push(byte);
            }
        }
        out.push(b'\n');
        out
    }

    /// Bodies made of events (good and bad), arrays of them, scalars, whitespace and broken
    /// pieces.
    fn bodies() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let event = prop_oneof![
            Just(EVENT.to_owned()),
            Just(EVENT.replace("\"x\":412.5", "\"x\":\"412.5\"")),
            Just(EVENT.replace("\"click\"", "\"scroll\"")),
            Just(EVENT.replace(",\"dpr\":2", "")),
            Just(EVENT.replace(",", " ,\n ")),
            Just(EVENT.replace(
                "\"dpr\":2",
                &format!("\"dpr\":{}1{}", "[".repeat(32), "]".repeat(32))
            )),
            Just("{}".to_owned()),
        ];
        let piece = prop_oneof![
            event.clone(),
            proptest::collection::vec(
                prop_oneof![event, Just("1".to_owned()), Just("[]".to_owned())],
                0..4
            )
            .prop_map(|items| format!("[{}]", items.join(","))),
            Just("12".to_owned()),
            Just("\"s\"".to_owned()),
            Just("tru".to_owned()),
            Just("{\"event_type\":".to_owned()),
            Just("]".to_owned()),
            Just(",".to_owned()),
        ];
        proptest::collection::vec(
            (
                piece,
                prop_oneof![Just(""), Just(" "), Just("\n"), Just("\r\n")],
            ),
            0..6,
        )
        .prop_map(|pieces| {
            pieces
                .into_iter()
                .flat_map(|(piece, gap)| [piece, gap.to_owned()])
                .collect::<String>()
                .into_bytes()
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 1024, failure_persistence: None, ..Default::default()
        })]

        /// The one-pass reader accepts, rejects and forwards exactly what reading with serde_json
        /// did.
        #[test]
        fn reads_bodies_as_serde_json_did(body in bodies()) {
            let batch = split_events(&body, &Limits::default());
            let (lines, rejected) = reference_split(&body);
            let ours: Vec<Vec<u8>> = batch.lines().map(<[u8]>::to_vec).collect();
            proptest::prop_assert_eq!(ours, lines, "{}", String::from_utf8_lossy(&body));
            let mut reasons = reasons(&batch);
            reasons.sort();
            proptest::prop_assert_eq!(reasons, rejected, "{}", String::from_utf8_lossy(&body));
        }
    }
}
