//! Click events: the JSON contract of the original demo, parsed without paying for what we skip.
//!
//! A record (one Kinesis record, or one line of a replayed file) holds one event object, a JSON
//! array of them, or several objects one after another (NDJSON, or Firehose's concatenation).
//! Only the fields the heatmap needs are decoded; every other value — the long `user_agent` above
//! all — is skipped by scanning for its end, which is what makes parsing cheap. Skipped values are
//! only checked for balance, not fully validated: they never reach the output.
//!
//! Nothing here panics or allocates on the common path; every rejected event is reported once,
//! with a reason, to the [`RecordVisitor`].

use std::borrow::Cow;

/// The parts of a click that the aggregation uses. `page_id` borrows from the record unless it
/// contained JSON escapes.
#[derive(Clone, Debug, PartialEq)]
pub struct ClickEvent<'a> {
    pub page_id: Cow<'a, str>,
    pub event_time_ms: i64,
    pub x: f64,
    pub y: f64,
    pub viewport_width: f64,
    pub viewport_height: f64,
}

/// Why an event (or a piece of a record) was not counted. The labels are metric label values and
/// dead-letter reasons, so they are stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Not JSON, or JSON cut short. Counted once per unreadable stretch of a record.
    MalformedJson,
    /// A JSON value that is not an object where an event was expected.
    NotAnObject,
    /// An event object larger than `limits.maxEventBytes`.
    EventTooLarge,
    /// A record larger than `limits.maxRecordBytes`.
    RecordTooLarge,
    /// A required field is absent or null.
    MissingField,
    /// A required field has the wrong JSON type (a string where a number belongs...).
    WrongType,
    /// `event_type` is something other than `"click"`.
    NotAClick,
    /// A number outside the range a real click can have (time before 1970 or after 9999,
    /// coordinates beyond ten million pixels, numbers too big for a double).
    OutOfRange,
    /// `viewport_width` or `viewport_height` is zero or negative.
    NonPositiveViewport,
    /// `page_id` is the empty string.
    EmptyPageId,
    /// `page_id` is longer than `limits.maxPageIdBytes`.
    PageIdTooLong,
    /// `page_id` contains bytes that are not UTF-8, or control characters.
    InvalidString,
}

impl RejectReason {
    pub const ALL: [RejectReason; 12] = [
        RejectReason::MalformedJson,
        RejectReason::NotAnObject,
        RejectReason::EventTooLarge,
        RejectReason::RecordTooLarge,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::NotAClick,
        RejectReason::OutOfRange,
        RejectReason::NonPositiveViewport,
        RejectReason::EmptyPageId,
        RejectReason::PageIdTooLong,
        RejectReason::InvalidString,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::EventTooLarge => "event_too_large",
            RejectReason::RecordTooLarge => "record_too_large",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::NotAClick => "not_a_click",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::NonPositiveViewport => "non_positive_viewport",
            RejectReason::EmptyPageId => "empty_page_id",
            RejectReason::PageIdTooLong => "page_id_too_long",
            RejectReason::InvalidString => "invalid_string",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A rejected event or record stretch: the reason, the field at fault if one is, and the raw
/// bytes so that it can be dead-lettered and replayed after a fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection<'a> {
    pub reason: RejectReason,
    pub field: Option<&'static str>,
    pub raw: &'a [u8],
}

/// Receives the outcome of every event in a record, in order.
pub trait RecordVisitor<'a> {
    fn click(&mut self, event: ClickEvent<'a>);
    fn reject(&mut self, rejection: Rejection<'a>);
}

/// Bounds on untrusted input, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_page_id_bytes: usize,
    pub max_event_bytes: usize,
    pub max_record_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from(&clickheatmap_crds::LimitsConfig::default())
    }
}

impl From<&clickheatmap_crds::LimitsConfig> for Limits {
    fn from(config: &clickheatmap_crds::LimitsConfig) -> Self {
        Limits {
            max_page_id_bytes: config.max_page_id_bytes as usize,
            max_event_bytes: config.max_event_bytes as usize,
            max_record_bytes: config.max_record_bytes as usize,
        }
    }
}

/// Largest coordinate or viewport side accepted, in CSS pixels.
pub const MAX_COORDINATE: f64 = 10_000_000.0;
/// Latest accepted event time: 9999-12-31T23:59:59.999Z.
pub const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;

/// Parses one record and reports each event in it to `visitor`.
pub fn parse_record<'a, V: RecordVisitor<'a>>(record: &'a [u8], limits: &Limits, visitor: &mut V) {
    if record.len() > limits.max_record_bytes {
        visitor.reject(Rejection {
            reason: RejectReason::RecordTooLarge,
            field: None,
            raw: record,
        });
        return;
    }
    let mut parser = Parser {
        buf: record,
        pos: 0,
        reported_until: 0,
    };
    // A UTF-8 byte order mark is harmless; editors add it to hand-written NDJSON files.
    if record.starts_with(b"\xEF\xBB\xBF") {
        parser.pos = 3;
    }
    loop {
        parser.skip_whitespace();
        let start = parser.pos;
        let Some(byte) = parser.peek() else { break };
        let outcome = match byte {
            b'{' => parser.event(limits, visitor),
            b'[' => parser.array_of_events(limits, visitor),
            _ => parser.skip_value().map(|()| {
                visitor.reject(Rejection {
                    reason: RejectReason::NotAnObject,
                    field: None,
                    raw: &record[start..parser.pos],
                })
            }),
        };
        if outcome.is_err() {
            // Nothing in a broken value can be trusted; NDJSON starts a new value on the next
            // line. The unreadable stretch counts once, and its dead letter starts after the
            // last element of a broken array that was already counted.
            let resume = memchr::memchr(b'\n', &record[start..])
                .map_or(record.len(), |offset| start + offset + 1);
            let unread = parser.reported_until.clamp(start, resume);
            visitor.reject(Rejection {
                reason: RejectReason::MalformedJson,
                field: None,
                raw: trim_ascii_end(&record[unread..resume]),
            });
            parser.pos = resume;
        }
    }
}

fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// A JSON syntax error; where it happened is the parser's position.
#[derive(Debug)]
struct SyntaxError;

type Parse<T> = Result<T, SyntaxError>;

/// A required field as found in the object.
#[derive(Clone, Copy)]
enum Slot<T> {
    Missing,
    WrongType,
    Invalid(RejectReason),
    Value(T),
}

impl<T> Slot<T> {
    fn get(self, field: &'static str) -> Result<T, (RejectReason, &'static str)> {
        match self {
            Slot::Missing => Err((RejectReason::MissingField, field)),
            Slot::WrongType => Err((RejectReason::WrongType, field)),
            Slot::Invalid(reason) => Err((reason, field)),
            Slot::Value(value) => Ok(value),
        }
    }
}

/// A JSON string as it appears in the input, without its quotes.
#[derive(Clone, Copy)]
struct RawString<'a> {
    bytes: &'a [u8],
    escaped: bool,
}

struct EventFields<'a> {
    event_type: Slot<RawString<'a>>,
    event_time_ms: Slot<i64>,
    page_id: Slot<RawString<'a>>,
    x: Slot<f64>,
    y: Slot<f64>,
    viewport_width: Slot<f64>,
    viewport_height: Slot<f64>,
}

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
    /// End of the last array element reported to the visitor.
    reported_until: usize,
}

impl<'a> Parser<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Parse<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(SyntaxError)
        }
    }

    fn array_of_events<V: RecordVisitor<'a>>(
        &mut self,
        limits: &Limits,
        visitor: &mut V,
    ) -> Parse<()> {
        self.expect(b'[')?;
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            let start = self.pos;
            if self.peek() == Some(b'{') {
                self.event(limits, visitor)?;
            } else {
                self.skip_value()?;
                visitor.reject(Rejection {
                    reason: RejectReason::NotAnObject,
                    field: None,
                    raw: &self.buf[start..self.pos],
                });
            }
            self.reported_until = self.pos;
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(SyntaxError),
            }
        }
    }

    /// Parses one event object and reports it; syntax errors propagate, field errors are reported.
    fn event<V: RecordVisitor<'a>>(&mut self, limits: &Limits, visitor: &mut V) -> Parse<()> {
        let start = self.pos;
        let fields = self.event_fields()?;
        let raw = &self.buf[start..self.pos];
        if raw.len() > limits.max_event_bytes {
            visitor.reject(Rejection {
                reason: RejectReason::EventTooLarge,
                field: None,
                raw,
            });
            return Ok(());
        }
        match validate(fields, limits) {
            Ok(event) => visitor.click(event),
            Err((reason, field)) => visitor.reject(Rejection {
                reason,
                field: Some(field),
                raw,
            }),
        }
        Ok(())
    }

    fn event_fields(&mut self) -> Parse<EventFields<'a>> {
        let mut fields = EventFields {
            event_type: Slot::Missing,
            event_time_ms: Slot::Missing,
            page_id: Slot::Missing,
            x: Slot::Missing,
            y: Slot::Missing,
            viewport_width: Slot::Missing,
            viewport_height: Slot::Missing,
        };
        self.expect(b'{')?;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(fields);
        }
        loop {
            self.skip_whitespace();
            self.expect(b'"')?;
            let key = self.string_body()?;
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            let key: Cow<'a, [u8]> = if key.escaped {
                Cow::Owned(unescape(key.bytes)?.into_bytes())
            } else {
                Cow::Borrowed(key.bytes)
            };
            match &*key {
                b"event_type" => fields.event_type = self.string_slot()?,
                b"page_id" => fields.page_id = self.string_slot()?,
                b"event_time_ms" => fields.event_time_ms = self.integer_slot()?,
                b"x" => fields.x = self.coordinate_slot()?,
                b"y" => fields.y = self.coordinate_slot()?,
                b"viewport_width" => fields.viewport_width = self.coordinate_slot()?,
                b"viewport_height" => fields.viewport_height = self.coordinate_slot()?,
                _ => self.skip_value()?,
            }
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(fields);
                }
                _ => return Err(SyntaxError),
            }
        }
    }

    /// After the opening quote: the string's raw bytes, leaving the position after the closing
    /// quote.
    #[inline]
    fn string_body(&mut self) -> Parse<RawString<'a>> {
        let start = self.pos;
        let mut escaped = false;
        let mut at = start;
        loop {
            let offset = memchr::memchr2(b'"', b'\\', &self.buf[at..]).ok_or(SyntaxError)?;
            at += offset;
            if self.buf[at] == b'"' {
                self.pos = at + 1;
                return Ok(RawString {
                    bytes: &self.buf[start..at],
                    escaped,
                });
            }
            escaped = true;
            // Skip the backslash and the escaped byte (a quote or backslash included).
            at += 2;
            if at > self.buf.len() {
                return Err(SyntaxError);
            }
        }
    }

    fn string_slot(&mut self) -> Parse<Slot<RawString<'a>>> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                Ok(Slot::Value(self.string_body()?))
            }
            Some(b'n') => self.null_slot(),
            _ => {
                self.skip_value()?;
                Ok(Slot::WrongType)
            }
        }
    }

    fn null_slot<T>(&mut self) -> Parse<Slot<T>> {
        self.literal(b"null")?;
        Ok(Slot::Missing)
    }

    fn coordinate_slot(&mut self) -> Parse<Slot<f64>> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => {
                let value = self.number()?.to_f64();
                if value.is_finite() && value.abs() <= MAX_COORDINATE {
                    Ok(Slot::Value(value))
                } else {
                    Ok(Slot::Invalid(RejectReason::OutOfRange))
                }
            }
            Some(b'n') => self.null_slot(),
            _ => {
                self.skip_value()?;
                Ok(Slot::WrongType)
            }
        }
    }

    fn integer_slot(&mut self) -> Parse<Slot<i64>> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => Ok(match self.number()?.to_i64() {
                Some(value) if (0..=MAX_EVENT_TIME_MS).contains(&value) => Slot::Value(value),
                Some(_) => Slot::Invalid(RejectReason::OutOfRange),
                // 1.5 is a number but not a millisecond count.
                None => Slot::WrongType,
            }),
            Some(b'n') => self.null_slot(),
            _ => {
                self.skip_value()?;
                Ok(Slot::WrongType)
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Parse<()> {
        if self.buf[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(SyntaxError)
        }
    }

    /// Reads a JSON number strictly by the grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    #[inline]
    fn number(&mut self) -> Parse<Number<'a>> {
        let start = self.pos;
        let buf = self.buf;
        let mut at = start;
        let negative = buf.get(at) == Some(&b'-');
        if negative {
            at += 1;
        }
        let mut mantissa: u64 = 0;
        let mut digits = 0u32;
        let int_start = at;
        while let Some(&d @ b'0'..=b'9') = buf.get(at) {
            if digits < 19 {
                mantissa = mantissa * 10 + u64::from(d - b'0');
            }
            digits += 1;
            at += 1;
        }
        let int_digits = at - int_start;
        if int_digits == 0 || (int_digits > 1 && buf[int_start] == b'0') {
            return Err(SyntaxError);
        }
        // Digits beyond the 19th are dropped from the mantissa and show up in the exponent.
        let mut exponent: i64 = i64::from(digits.saturating_sub(19));
        let mut integral = true;
        if buf.get(at) == Some(&b'.') {
            integral = false;
            at += 1;
            let frac_start = at;
            while let Some(&d @ b'0'..=b'9') = buf.get(at) {
                if digits < 19 {
                    mantissa = mantissa * 10 + u64::from(d - b'0');
                    exponent -= 1;
                }
                digits += 1;
                at += 1;
            }
            if at == frac_start {
                return Err(SyntaxError);
            }
        }
        if let Some(b'e' | b'E') = buf.get(at) {
            integral = false;
            at += 1;
            let exp_negative = match buf.get(at) {
                Some(b'-') => {
                    at += 1;
                    true
                }
                Some(b'+') => {
                    at += 1;
                    false
                }
                _ => false,
            };
            let exp_start = at;
            let mut written: i64 = 0;
            while let Some(&d @ b'0'..=b'9') = buf.get(at) {
                written = (written * 10 + i64::from(d - b'0')).min(1_000_000);
                at += 1;
            }
            if at == exp_start {
                return Err(SyntaxError);
            }
            exponent += if exp_negative { -written } else { written };
        }
        self.pos = at;
        Ok(Number {
            text: &buf[start..at],
            negative,
            mantissa,
            exponent,
            exact: digits <= 19,
            integral,
        })
    }

    /// Skips any JSON value. Nested containers are only checked for balanced brackets.
    fn skip_value(&mut self) -> Parse<()> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                self.string_body().map(|_| ())
            }
            Some(b'{' | b'[') => self.skip_container(),
            Some(b'-' | b'0'..=b'9') => self.number().map(|_| ()),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => Err(SyntaxError),
        }
    }

    fn skip_container(&mut self) -> Parse<()> {
        let mut stack: Vec<u8> = Vec::new();
        loop {
            let Some(byte) = self.peek() else {
                return Err(SyntaxError);
            };
            self.pos += 1;
            match byte {
                b'{' => stack.push(b'}'),
                b'[' => stack.push(b']'),
                b'}' | b']' => {
                    if stack.pop() != Some(byte) {
                        return Err(SyntaxError);
                    }
                    if stack.is_empty() {
                        return Ok(());
                    }
                }
                b'"' => {
                    self.string_body()?;
                }
                _ => {}
            }
        }
    }
}

/// A JSON number, decoded lazily: the mantissa holds the first 19 significant digits.
struct Number<'a> {
    text: &'a [u8],
    negative: bool,
    mantissa: u64,
    exponent: i64,
    exact: bool,
    integral: bool,
}

/// Powers of ten that f64 represents exactly.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

impl Number<'_> {
    fn to_f64(&self) -> f64 {
        // Both the mantissa and the power of ten are exact doubles, so one multiplication or
        // division rounds correctly (Clinger's fast path); everything else takes the slow road.
        if self.exact && self.mantissa < (1 << 53) && self.exponent.unsigned_abs() <= 22 {
            let mantissa = self.mantissa as f64;
            let power = EXACT_POWERS_OF_TEN[self.exponent.unsigned_abs() as usize];
            let value = if self.exponent < 0 {
                mantissa / power
            } else {
                mantissa * power
            };
            return if self.negative { -value } else { value };
        }
        std::str::from_utf8(self.text)
            .ok()
            .and_then(|text| text.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    }

    /// The value as an integer, if it is one (`1.7e12` and `1700000000000.0` count).
    fn to_i64(&self) -> Option<i64> {
        if self.integral && self.exact {
            let magnitude = i64::try_from(self.mantissa).ok()?;
            return Some(if self.negative { -magnitude } else { magnitude });
        }
        let value = self.to_f64();
        if value.is_finite() && value.fract() == 0.0 && value.abs() < 9.0e18 {
            Some(value as i64)
        } else if value.is_finite() && value.fract() == 0.0 {
            // Integral but beyond i64: out of range rather than of the wrong type.
            Some(i64::MAX)
        } else {
            None
        }
    }
}

/// Decodes a JSON string body with escapes (the rare path).
fn unescape(body: &[u8]) -> Parse<String> {
    let mut quoted = Vec::with_capacity(body.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(body);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).map_err(|_| SyntaxError)
}

fn validate<'a>(
    fields: EventFields<'a>,
    limits: &Limits,
) -> Result<ClickEvent<'a>, (RejectReason, &'static str)> {
    let event_type = fields.event_type.get("event_type")?;
    let is_click = if event_type.escaped {
        unescape(event_type.bytes).is_ok_and(|text| text == "click")
    } else {
        event_type.bytes == b"click"
    };
    if !is_click {
        return Err((RejectReason::NotAClick, "event_type"));
    }
    let event_time_ms = fields.event_time_ms.get("event_time_ms")?;
    let page_id = page_id(fields.page_id.get("page_id")?, limits)?;
    let x = fields.x.get("x")?;
    let y = fields.y.get("y")?;
    let viewport_width = fields.viewport_width.get("viewport_width")?;
    if viewport_width <= 0.0 {
        return Err((RejectReason::NonPositiveViewport, "viewport_width"));
    }
    let viewport_height = fields.viewport_height.get("viewport_height")?;
    if viewport_height <= 0.0 {
        return Err((RejectReason::NonPositiveViewport, "viewport_height"));
    }
    Ok(ClickEvent {
        page_id,
        event_time_ms,
        x,
        y,
        viewport_width,
        viewport_height,
    })
}

fn page_id<'a>(
    raw: RawString<'a>,
    limits: &Limits,
) -> Result<Cow<'a, str>, (RejectReason, &'static str)> {
    const FIELD: &str = "page_id";
    let text: Cow<'a, str> = if raw.escaped {
        Cow::Owned(unescape(raw.bytes).map_err(|_| (RejectReason::InvalidString, FIELD))?)
    } else {
        Cow::Borrowed(
            std::str::from_utf8(raw.bytes).map_err(|_| (RejectReason::InvalidString, FIELD))?,
        )
    };
    if text.is_empty() {
        return Err((RejectReason::EmptyPageId, FIELD));
    }
    if text.len() > limits.max_page_id_bytes {
        return Err((RejectReason::PageIdTooLong, FIELD));
    }
    // A page id ends up in file contents, metrics and the viewer: no control characters.
    if text.chars().any(char::is_control) {
        return Err((RejectReason::InvalidString, FIELD));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        clicks: Vec<ClickEvent<'static>>,
        rejects: Vec<(RejectReason, Option<&'static str>, String)>,
    }

    impl<'a> RecordVisitor<'a> for Collect {
        fn click(&mut self, event: ClickEvent<'a>) {
            self.clicks.push(ClickEvent {
                page_id: Cow::Owned(event.page_id.into_owned()),
                ..event
            });
        }
        fn reject(&mut self, rejection: Rejection<'a>) {
            self.rejects.push((
                rejection.reason,
                rejection.field,
                String::from_utf8_lossy(rejection.raw).into_owned(),
            ));
        }
    }

    fn parse(text: &str) -> Collect {
        let mut collect = Collect::default();
        parse_record(text.as_bytes(), &Limits::default(), &mut collect);
        collect
    }

    fn reasons(text: &str) -> Vec<RejectReason> {
        parse(text).rejects.iter().map(|r| r.0).collect()
    }

    const DEMO: &str = r#"{"event_type":"click","event_time":"2025-12-28T10:51:06.968Z","event_time_ms":1766919066968,"page_id":"demo-page","x":412.5,"y":233,"viewport_width":1280,"viewport_height":720,"dpr":2,"user_agent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36 \"quoted\" \\ back"}"#;

    #[test]
    fn parses_the_demo_event() {
        let out = parse(DEMO);
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        assert_eq!(
            out.clicks,
            vec![ClickEvent {
                page_id: "demo-page".into(),
                event_time_ms: 1_766_919_066_968,
                x: 412.5,
                y: 233.0,
                viewport_width: 1280.0,
                viewport_height: 720.0,
            }]
        );
    }

    #[test]
    fn parses_arrays_ndjson_and_concatenated_objects() {
        let array = format!("[{DEMO}, {DEMO}]");
        assert_eq!(parse(&array).clicks.len(), 2);
        let ndjson = format!("{DEMO}\n{DEMO}\r\n\n{DEMO}\n");
        assert_eq!(parse(&ndjson).clicks.len(), 3);
        let concatenated = format!("{DEMO}{DEMO}");
        assert_eq!(parse(&concatenated).clicks.len(), 2);
        assert_eq!(parse("[]").clicks.len(), 0);
        assert!(parse("[]").rejects.is_empty());
        assert!(parse("  \n ").rejects.is_empty());
    }

    #[test]
    fn field_order_and_unknown_fields_do_not_matter() {
        let out = parse(
            r#"{"extra":{"a":[1,2,{"b":"}"}]},"viewport_height":10,"y":1,"x":2,"page_id":"p","viewport_width":10,"event_time_ms":5,"event_type":"click","n":null,"t":true,"f":false,"e":-1.5e-3}"#,
        );
        assert_eq!(out.rejects, vec![]);
        assert_eq!(out.clicks[0].x, 2.0);
    }

    #[test]
    fn escapes_are_decoded() {
        let out = parse(
            r#"{"event_type":"cl\u0069ck","event_time_ms":1,"page_\u0069d":"caf\u00e9 \"p\"","x":1,"y":1,"viewport_width":2,"viewport_height":2}"#,
        );
        assert_eq!(out.rejects, vec![]);
        assert_eq!(out.clicks[0].page_id, "café \"p\"");
    }

    #[test]
    fn every_reason_is_reported_with_its_field() {
        let base = |replace: &str, with: &str| DEMO.replacen(replace, with, 1);
        let cases: Vec<(String, RejectReason, Option<&str>)> = vec![
            ("{not json".into(), RejectReason::MalformedJson, None),
            ("42".into(), RejectReason::NotAnObject, None),
            ("[1]".into(), RejectReason::NotAnObject, None),
            (
                base(r#""event_type":"click""#, r#""event_type":"scroll""#),
                RejectReason::NotAClick,
                Some("event_type"),
            ),
            (
                base(r#""event_type":"click","#, ""),
                RejectReason::MissingField,
                Some("event_type"),
            ),
            (
                base(r#""page_id":"demo-page""#, r#""page_id":null"#),
                RejectReason::MissingField,
                Some("page_id"),
            ),
            (
                base(r#""x":412.5"#, r#""x":"412.5""#),
                RejectReason::WrongType,
                Some("x"),
            ),
            (
                base(r#""y":233"#, r#""y":[233]"#),
                RejectReason::WrongType,
                Some("y"),
            ),
            (
                base(r#""event_time_ms":1766919066968"#, r#""event_time_ms":1.5"#),
                RejectReason::WrongType,
                Some("event_time_ms"),
            ),
            (
                base(r#""event_time_ms":1766919066968"#, r#""event_time_ms":-1"#),
                RejectReason::OutOfRange,
                Some("event_time_ms"),
            ),
            (
                base(
                    r#""event_time_ms":1766919066968"#,
                    r#""event_time_ms":1e300"#,
                ),
                RejectReason::OutOfRange,
                Some("event_time_ms"),
            ),
            (
                base(r#""x":412.5"#, r#""x":1e400"#),
                RejectReason::OutOfRange,
                Some("x"),
            ),
            (
                base(r#""x":412.5"#, r#""x":20000000"#),
                RejectReason::OutOfRange,
                Some("x"),
            ),
            (
                base(r#""viewport_width":1280"#, r#""viewport_width":0"#),
                RejectReason::NonPositiveViewport,
                Some("viewport_width"),
            ),
            (
                base(r#""viewport_height":720"#, r#""viewport_height":-720"#),
                RejectReason::NonPositiveViewport,
                Some("viewport_height"),
            ),
            (
                base(r#""page_id":"demo-page""#, r#""page_id":"""#),
                RejectReason::EmptyPageId,
                Some("page_id"),
            ),
            (
                base(
                    r#""page_id":"demo-page""#,
                    &format!(r#""page_id":"{}""#, "p".repeat(257)),
                ),
                RejectReason::PageIdTooLong,
                Some("page_id"),
            ),
            (
                base(r#""page_id":"demo-page""#, r#""page_id":"a\u0000b""#),
                RejectReason::InvalidString,
                Some("page_id"),
            ),
        ];
        for (input, reason, field) in cases {
            let out = parse(&input);
            assert!(out.clicks.is_empty(), "{input}");
            assert_eq!(out.rejects.len(), 1, "{input}: {:?}", out.rejects);
            assert_eq!(
                (out.rejects[0].0, out.rejects[0].1),
                (reason, field),
                "{input}"
            );
        }
    }

    #[test]
    fn invalid_utf8_in_page_id_is_rejected() {
        let mut bytes = DEMO.as_bytes().to_vec();
        let at = DEMO.find("demo-page").unwrap();
        bytes[at] = 0xFF;
        let mut collect = Collect::default();
        parse_record(&bytes, &Limits::default(), &mut collect);
        assert_eq!(collect.rejects[0].0, RejectReason::InvalidString);
    }

    #[test]
    fn size_limits() {
        let limits = Limits {
            max_page_id_bytes: 256,
            max_event_bytes: 100,
            max_record_bytes: 1000,
        };
        let mut collect = Collect::default();
        parse_record(DEMO.as_bytes(), &limits, &mut collect);
        assert_eq!(collect.rejects[0].0, RejectReason::EventTooLarge);
        let mut collect = Collect::default();
        parse_record(DEMO.repeat(5).as_bytes(), &limits, &mut collect);
        assert_eq!(collect.rejects.len(), 1);
        assert_eq!(collect.rejects[0].0, RejectReason::RecordTooLarge);
    }

    #[test]
    fn a_broken_line_does_not_take_its_neighbours_with_it() {
        let text =
            format!("{DEMO}\n{{\"event_type\":\"click\",\"x\":\n{DEMO}\n[{DEMO},oops]\n{DEMO}");
        let out = parse(&text);
        assert_eq!(out.clicks.len(), 4, "{:?}", out.rejects);
        assert_eq!(
            out.rejects.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![RejectReason::MalformedJson, RejectReason::MalformedJson]
        );
        assert_eq!(out.rejects[0].2, "{\"event_type\":\"click\",\"x\":");
        assert_eq!(
            out.rejects[1].2, ",oops]",
            "the counted element is not dead-lettered again"
        );
    }

    #[test]
    fn malformed_inputs_never_panic_and_always_count() {
        for input in [
            "{",
            "[",
            "\"",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1",
            "{\"a\":1,",
            "[{},",
            "nul",
            "tru",
            "-",
            "1.",
            "1e",
            "01",
            "{\"x\":--1}",
            "{\"x\":1.e5}",
            "\\",
            "}",
            "]",
            "{]",
            "[}",
            "{\"a\":\"\\",
            "\u{feff}",
        ] {
            let out = parse(input);
            assert!(out.clicks.is_empty(), "{input:?}");
            assert!(
                !out.rejects.is_empty() || input == "\u{feff}",
                "{input:?} was not counted"
            );
        }
        assert_eq!(reasons("{}"), vec![RejectReason::MissingField]);
    }

    #[test]
    fn numbers_decode_exactly() {
        for text in [
            "0",
            "-0",
            "1",
            "412.5",
            "0.1",
            "1e3",
            "1E-3",
            "123456789012345678",
            "1.7976931348623157e308",
            "9007199254740993",
            "0.30000000000000004",
            "12345678901234567890123",
            "1e-400",
        ] {
            let mut parser = Parser {
                buf: text.as_bytes(),
                pos: 0,
                reported_until: 0,
            };
            let number = parser.number().unwrap();
            let expected: f64 = text.parse().unwrap();
            assert_eq!(number.to_f64().to_bits(), expected.to_bits(), "{text}");
        }
    }
}
