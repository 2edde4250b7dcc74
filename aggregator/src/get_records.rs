//! GetRecords responses decoded beside the SDK instead of by its generic JSON deserializer.
//!
//! A GetRecords response holds up to 10 MiB of record data as base64 strings. The SDK's
//! deserializer copies each of them into a string, decodes it into a vector of its own and
//! allocates per record; profiled, that was a fifth of the consumer's CPU. The client's HTTP
//! connector is wrapped instead: for a successful GetRecords response it copies the body into a
//! reused buffer as it arrives, scans the JSON once, decodes every record's data in place in that
//! buffer (records are slices of it, no further copy), and hands the SDK the same response with
//! an empty `Records` array, so the SDK still parses the iterator,
//! `MillisBehindLatest`, `ChildShards` and every error exactly as before. The decoded records
//! travel on the response as an extension; [`TakeDecodedRecords`], an interceptor of the call,
//! takes them from there. A response the scanner does not recognise (an escaped string, a
//! shape Kinesis does not send) passes through untouched and the SDK decodes it as usual.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents, RuntimeComponentsBuilder};
use aws_sdk_kinesis::error::BoxError;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use crate::kinesis::ShardRecord;

const GET_RECORDS_TARGET: &str = "Kinesis_20131202.GetRecords";
/// Kinesis caps a response at 10 MiB of data (base64 and JSON around it).
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// A response body that sends nothing for this long has stalled (the SDK's own protection
/// gives up after 5 s below 1 byte/s).
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Records decoded from one GetRecords response, attached to the HTTP response.
#[derive(Clone, Debug)]
pub(crate) struct DecodedRecords(pub(crate) Arc<Vec<ShardRecord>>);

/// The Kinesis client's HTTP client, wrapped to decode GetRecords responses.
#[derive(Debug)]
pub(crate) struct DecodingHttpClient {
    inner: SharedHttpClient,
    buffers: Arc<ResponseBuffers>,
    body_idle_timeout: Duration,
}

impl DecodingHttpClient {
    /// `keep_bytes`: how much of earlier responses' buffers may be kept for the next ones.
    pub(crate) fn new(inner: SharedHttpClient, keep_bytes: usize) -> Self {
        DecodingHttpClient {
            inner,
            buffers: Arc::new(ResponseBuffers::new(keep_bytes)),
            body_idle_timeout: BODY_IDLE_TIMEOUT,
        }
    }

    #[cfg(test)]
    fn with_body_idle_timeout(mut self, timeout: Duration) -> Self {
        self.body_idle_timeout = timeout;
        self
    }
}

impl HttpClient for DecodingHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(DecodingConnector {
            inner: self.inner.http_connector(settings, components),
            buffers: Arc::clone(&self.buffers),
            body_idle_timeout: self.body_idle_timeout,
        })
    }

    fn validate_base_client_config(
        &self,
        runtime_components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.inner
            .validate_base_client_config(runtime_components, cfg)
    }

    fn validate_final_config(
        &self,
        runtime_components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.inner.validate_final_config(runtime_components, cfg)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.inner.connector_metadata()
    }
}

#[derive(Debug)]
struct DecodingConnector {
    inner: SharedHttpConnector,
    buffers: Arc<ResponseBuffers>,
    body_idle_timeout: Duration,
}

impl HttpConnector for DecodingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let get_records = request.headers().get("x-amz-target") == Some(GET_RECORDS_TARGET);
        let call = self.inner.call(request);
        let buffers = Arc::clone(&self.buffers);
        let body_idle_timeout = self.body_idle_timeout;
        HttpConnectorFuture::new(async move {
            let mut response = call.await?;
            if !get_records || !response.status().is_success() {
                return Ok(response);
            }
            // One copy, frame by frame as they arrive (the HTTP client's read buffers are
            // reused at once), into a buffer an earlier response left (its pages are mapped).
            let length = response
                .headers()
                .get("content-length")
                .and_then(|value| value.parse::<usize>().ok())
                .unwrap_or(0)
                .min(MAX_RESPONSE_BYTES);
            let mut body = buffers.take(length);
            let mut stream = response.take_body();
            // The SDK's stalled-stream protection wraps the body only after this connector
            // returns: a connection that goes silent mid-body is caught here instead.
            loop {
                let frame = tokio::time::timeout(body_idle_timeout, stream.frame())
                    .await
                    .map_err(|elapsed| ConnectorError::timeout(elapsed.into()))?;
                let Some(frame) = frame else { break };
                let frame = frame.map_err(ConnectorError::io)?;
                if let Some(data) = frame.data_ref() {
                    body.extend_from_slice(data);
                }
            }
            let capacity = body.capacity();
            let Some(layout) = Layout::scan(&body) else {
                tracing::debug!(
                    bytes = body.len(),
                    "GetRecords response left to the SDK's deserializer"
                );
                *response.body_mut() = SdkBody::from(body.freeze());
                return Ok(response);
            };
            let Split {
                records,
                rest,
                buffer,
            } = layout
                .split(body)
                .map_err(|e| ConnectorError::other(e.into(), None))?;
            buffers.keep(buffer, capacity);
            response
                .headers_mut()
                .insert("content-length", rest.len().to_string());
            *response.body_mut() = SdkBody::from(rest);
            response.add_extension(DecodedRecords(Arc::new(records)));
            Ok(response)
        })
    }
}

/// Response buffers kept after their records were handed out, refilled by a later response
/// once every record sliced from them is gone. Fresh 10 MiB buffers cost page faults and
/// zeroed pages on every response (a sixth of the consumer's CPU in the benchmark). The
/// buffers it tracks, in use or free, hold at most `keep_bytes` of capacity together.
#[derive(Debug)]
struct ResponseBuffers {
    /// Each buffer with its capacity.
    kept: Mutex<Vec<(Bytes, usize)>>,
    keep_bytes: usize,
}

impl ResponseBuffers {
    fn new(keep_bytes: usize) -> Self {
        ResponseBuffers {
            kept: Mutex::new(Vec::new()),
            keep_bytes,
        }
    }

    /// An empty buffer of at least `capacity` bytes: the smallest kept one that no record
    /// holds any more and that the response fills at least a quarter of, or a new one.
    fn take(&self, capacity: usize) -> BytesMut {
        let reusable = self.kept.lock().ok().and_then(|mut kept| {
            let index = kept
                .iter()
                .enumerate()
                .filter(|(_, (buffer, size))| {
                    *size >= capacity && *size / 4 <= capacity && buffer.is_unique()
                })
                .min_by_key(|(_, (_, size))| *size)
                .map(|(index, _)| index)?;
            Some(kept.swap_remove(index).0)
        });
        match reusable.map(Bytes::try_into_mut) {
            Some(Ok(mut buffer)) if buffer.capacity() >= capacity => {
                buffer.clear();
                buffer
            }
            _ => BytesMut::with_capacity(capacity),
        }
    }

    /// Keeps a handed-out buffer of `capacity` bytes for later, within the limit.
    fn keep(&self, buffer: Bytes, capacity: usize) {
        if let Ok(mut kept) = self.kept.lock() {
            let held: usize = kept.iter().map(|(_, size)| size).sum();
            if held + capacity <= self.keep_bytes {
                kept.push((buffer, capacity));
            }
        }
    }
}

/// Per call: takes the records [`DecodingConnector`] decoded from the response the SDK is
/// about to deserialize (the last attempt's, when the SDK retried).
#[derive(Debug, Default)]
pub(crate) struct TakeDecodedRecords {
    slot: Arc<Mutex<Option<DecodedRecords>>>,
}

impl TakeDecodedRecords {
    /// A handle on the slot, to read once the call returned.
    pub(crate) fn slot(&self) -> Arc<Mutex<Option<DecodedRecords>>> {
        Arc::clone(&self.slot)
    }
}

impl Intercept for TakeDecodedRecords {
    fn name(&self) -> &'static str {
        "TakeDecodedRecords"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let decoded = context.response().extension::<DecodedRecords>().cloned();
        if let Ok(mut slot) = self.slot.lock() {
            *slot = decoded;
        }
        Ok(())
    }
}

/// A GetRecords response split in two: its records, and the rest of the JSON with an empty
/// `Records` array for the SDK.
#[derive(Debug)]
pub(crate) struct Split {
    pub(crate) records: Vec<ShardRecord>,
    pub(crate) rest: Vec<u8>,
    /// The whole buffer the records are slices of.
    pub(crate) buffer: Bytes,
}

/// Where one record's fields sit in the response.
#[derive(Debug)]
struct RecordSpans {
    data: (usize, usize),
    sequence_number: (usize, usize),
}

/// Where a GetRecords response keeps its records.
#[derive(Debug)]
pub(crate) struct Layout {
    records_array: (usize, usize),
    records: Vec<RecordSpans>,
}

#[derive(Debug, thiserror::Error)]
#[error("the GetRecords response holds a record whose data is not base64")]
pub(crate) struct InvalidData;

impl Layout {
    /// Scans a GetRecords response body; `None` when it is not a shape this scanner accepts
    /// (the caller then leaves the whole body to the SDK).
    pub(crate) fn scan(body: &[u8]) -> Option<Layout> {
        let mut scan = Scanner {
            bytes: body,
            pos: 0,
        };
        let mut records_array = None;
        let mut records = Vec::new();
        scan.object(|scan, key| {
            if key == b"Records" {
                if records_array.is_some() {
                    // Twice: the SDK would take the last; leave it to the SDK.
                    return None;
                }
                let start = scan.pos;
                scan.records(&mut records)?;
                records_array = Some((start, scan.pos));
                Some(())
            } else {
                scan.skip_value(0)
            }
        })?;
        scan.whitespace();
        if scan.pos != body.len() {
            return None;
        }
        Some(Layout {
            records_array: records_array?,
            records,
        })
    }

    /// Decodes every record's data in place, inside the response's own buffer (no second copy
    /// of up to 10 MiB), and hands out the records as slices of it. Invalid base64 fails the
    /// call, as it would in the SDK's deserializer.
    pub(crate) fn split(self, mut buffer: BytesMut) -> Result<Split, InvalidData> {
        let (array_start, array_end) = self.records_array;
        let mut rest = Vec::with_capacity(buffer.len() - (array_end - array_start) + 2);
        rest.extend_from_slice(&buffer[..array_start]);
        rest.extend_from_slice(b"[]");
        rest.extend_from_slice(&buffer[array_end..]);

        let mut decoded_lengths = Vec::with_capacity(self.records.len());
        for record in &self.records {
            let (from, to) = record.data;
            let decoded = base64_simd::STANDARD
                .decode_inplace(&mut buffer[from..to])
                .map_err(|_| InvalidData)?;
            decoded_lengths.push(decoded.len());
        }
        let buffer = buffer.freeze();
        let records = self
            .records
            .iter()
            .zip(decoded_lengths)
            .map(|(record, length)| {
                let (from, to) = record.sequence_number;
                ShardRecord {
                    // Checked to be UTF-8 by the scan, and outside every decoded span.
                    sequence_number: String::from_utf8_lossy(&buffer[from..to]).into_owned(),
                    data: buffer.slice(record.data.0..record.data.0 + length),
                }
            })
            .collect();
        Ok(Split {
            records,
            rest,
            buffer,
        })
    }
}

/// Values nested deeper than this are not a GetRecords response.
const MAX_DEPTH: usize = 16;

/// A forward-only scanner over JSON text; every method returns `None` on anything unexpected.
struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.whitespace();
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// A string without escapes: the span of its content. Keys, base64 data and sequence
    /// numbers never need escapes; a string with one makes the scan give up.
    fn plain_string(&mut self) -> Option<(usize, usize)> {
        self.eat(b'"')?;
        let start = self.pos;
        let len = memchr::memchr2(b'"', b'\\', &self.bytes[start..])?;
        if self.bytes[start + len] != b'"' {
            return None;
        }
        self.pos = start + len + 1;
        Some((start, start + len))
    }

    /// Any string, escapes included, skipped.
    fn skip_string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let len = memchr::memchr2(b'"', b'\\', &self.bytes[self.pos..])?;
            self.pos += len;
            if self.bytes[self.pos] == b'"' {
                self.pos += 1;
                return Some(());
            }
            // A backslash and the character it escapes (`\uXXXX`'s digits are plain).
            self.pos += 2;
            if self.pos > self.bytes.len() {
                return None;
            }
        }
    }

    /// `{ "key": value, ... }`, calling `field` on each key with the scanner at its value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        self.list(b'{', b'}', |scan| {
            let (start, end) = scan.plain_string()?;
            scan.eat(b':')?;
            let bytes = scan.bytes;
            field(scan, &bytes[start..end])
        })
    }

    /// `[ value, ... ]`, calling `item` with the scanner at each value.
    fn array(&mut self, item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.list(b'[', b']', item)
    }

    /// `open element, ... close`, calling `element` at each.
    fn list(
        &mut self,
        open: u8,
        close: u8,
        mut element: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        if self.peek()? == close {
            self.pos += 1;
            return Some(());
        }
        loop {
            element(self)?;
            match self.peek()? {
                b',' => self.pos += 1,
                byte if byte == close => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' => self.object(|scan, _| scan.skip_value(depth + 1)),
            b'[' => self.array(|scan| scan.skip_value(depth + 1)),
            b't' | b'f' | b'n' | b'-' | b'0'..=b'9' => {
                let start = self.pos;
                while let Some(b'a'..=b'z' | b'0'..=b'9' | b'-' | b'+' | b'.' | b'E') =
                    self.bytes.get(self.pos)
                {
                    self.pos += 1;
                }
                let token = &self.bytes[start..self.pos];
                let keyword = matches!(token, b"true" | b"false" | b"null");
                let number = token[0] == b'-' || token[0].is_ascii_digit();
                let letters = token.iter().any(|b| b.is_ascii_lowercase() && *b != b'e');
                (keyword || (number && !letters)).then_some(())
            }
            _ => None,
        }
    }

    /// The `Records` array: each record's `Data` and `SequenceNumber`, other fields skipped.
    fn records(&mut self, spans: &mut Vec<RecordSpans>) -> Option<()> {
        self.array(|scan| {
            let mut data = None;
            let mut sequence_number = None;
            scan.object(|scan, key| match key {
                b"Data" => {
                    data = Some(scan.plain_string()?);
                    Some(())
                }
                b"SequenceNumber" => {
                    let (from, to) = scan.plain_string()?;
                    std::str::from_utf8(&scan.bytes[from..to]).ok()?;
                    sequence_number = Some((from, to));
                    Some(())
                }
                _ => scan.skip_value(1),
            })?;
            spans.push(RecordSpans {
                data: data?,
                sequence_number: sequence_number?,
            });
            Some(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(data: &[u8]) -> String {
        base64_simd::STANDARD.encode_to_string(data)
    }

    /// What the SDK's path yields, by a general JSON parser: (sequence number, data) per record
    /// and the response without its records.
    fn reference(body: &str) -> (Vec<(String, Vec<u8>)>, serde_json::Value) {
        let mut value: serde_json::Value = serde_json::from_str(body).expect("JSON");
        let records = value["Records"]
            .as_array()
            .expect("Records")
            .iter()
            .map(|record| {
                (
                    record["SequenceNumber"].as_str().expect("seq").to_owned(),
                    base64_simd::STANDARD
                        .decode_to_vec(record["Data"].as_str().expect("data"))
                        .expect("base64"),
                )
            })
            .collect();
        value["Records"] = serde_json::json!([]);
        (records, value)
    }

    fn check(body: &str) {
        let split = Layout::scan(body.as_bytes())
            .expect("scan")
            .split(BytesMut::from(body.as_bytes()))
            .expect("split");
        let (expected, rest) = reference(body);
        let got: Vec<(String, Vec<u8>)> = split
            .records
            .iter()
            .map(|r| (r.sequence_number.clone(), r.data.to_vec()))
            .collect();
        assert_eq!(got, expected);
        let parsed: serde_json::Value = serde_json::from_slice(&split.rest).expect("rest is JSON");
        assert_eq!(parsed, rest);
    }

    #[test]
    fn kinesis_shaped_responses_split_exactly() {
        // As Kinesis writes it (compact), with child shards after the shard closed.
        check(&format!(
            r#"{{"ChildShards":[{{"HashKeyRange":{{"EndingHashKey":"17","StartingHashKey":"0"}},"ParentShards":["shardId-000000000000"],"ShardId":"shardId-000000000002"}}],"MillisBehindLatest":0,"NextShardIterator":"AAAA/+b==","Records":[{{"ApproximateArrivalTimestamp":1.764E9,"Data":"{}","EncryptionType":null,"PartitionKey":"p\"k","SequenceNumber":"4959"}},{{"Data":"{}","PartitionKey":"","SequenceNumber":"4960","ApproximateArrivalTimestamp":1764000000.123}}]}}"#,
            encode(b"{\"page\":\"/\"}\n"),
            encode(&(0..=255).collect::<Vec<u8>>()),
        ));
        // As moto writes it (spaces, records first), and empty.
        check(&format!(
            "{{\"Records\": [ {{\"Data\": \"{}\", \"PartitionKey\": \"k\", \"SequenceNumber\": \"1\"}} ], \"MillisBehindLatest\": 12, \"NextShardIterator\": \"it\"}}",
            encode(b"x")
        ));
        check(r#"{"MillisBehindLatest":0,"NextShardIterator":"it","Records":[]}"#);
        check("{ \"Records\" : [ ] , \"NextShardIterator\" : null }\n");
    }

    #[test]
    fn unexpected_shapes_are_left_to_the_sdk() {
        for body in [
            "",
            "[]",
            r#"{"NextShardIterator":"it"}"#, // no records
            r#"{"Records":[{"Data":"eA\u003d\u003d","SequenceNumber":"1"}]}"#, // escaped data
            r#"{"Records":[{"Data":"eA==","SequenceNumber":"1"}]"#, // truncated
            r#"{"Records":[{"Data":"eA=="}]}"#, // no sequence number
            r#"{"Records":[{"Data":"eA==","SequenceNumber":"1"}]} x"#, // trailing text
            r#"{"Records":[],"MillisBehindLatest":tru}"#,
            r#"{"Records":[],"X":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}"#,
            r#"{"Records":[],"Records":[{"Data":"eA==","SequenceNumber":"1"}]}"#, // twice
        ] {
            assert!(Layout::scan(body.as_bytes()).is_none(), "{body}");
        }
        // Not base64: the call fails, as the SDK's deserializer would fail it.
        let body = r#"{"Records":[{"Data":"e!==","SequenceNumber":"1"}]}"#;
        let layout = Layout::scan(body.as_bytes()).expect("a GetRecords shape");
        assert!(layout.split(BytesMut::from(body.as_bytes())).is_err());
    }

    /// Responses served over HTTP to the SDK's client with the connector in place: the
    /// decoded records reach the caller, an escaped response goes the SDK's way with the same
    /// result, and an error is the SDK's error.
    #[tokio::test]
    async fn the_sdk_call_takes_the_records_the_connector_decoded() {
        use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::IntoResponse;
        use futures_util::StreamExt;

        let plain = format!(
            r#"{{"MillisBehindLatest":7,"NextShardIterator":"next","Records":[{{"Data":"{}","PartitionKey":"k","SequenceNumber":"11"}},{{"Data":"//8=","PartitionKey":"k","SequenceNumber":"12"}}]}}"#,
            encode(b"{\"page\":\"/\"}\n")
        );
        // The same, with JSON's optional escape of '/' (the scanner leaves it to the SDK).
        let escaped = plain.replace("//8=", r"\/\/8=");
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (plain, escaped) = (plain.clone(), escaped.clone());
                async move {
                    let target = headers
                        .get("x-amz-target")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    assert_eq!(target, GET_RECORDS_TARGET);
                    let json = [(header::CONTENT_TYPE, "application/x-amz-json-1.1")];
                    if body.contains("stalled") {
                        // Headers and a first part, then silence on an open connection.
                        let first = futures_util::stream::iter([Ok::<_, std::io::Error>(
                            axum::body::Bytes::from_static(b"{\"Records\":["),
                        )]);
                        let body = axum::body::Body::from_stream(
                            first.chain(futures_util::stream::pending()),
                        );
                        return axum::response::Response::builder()
                            .header(header::CONTENT_TYPE, "application/x-amz-json-1.1")
                            .header(header::CONTENT_LENGTH, "1000")
                            .body(body)
                            .expect("response");
                    }
                    if body.contains("expired") {
                        let error = r#"{"__type":"ExpiredIteratorException","message":"old"}"#;
                        return (StatusCode::BAD_REQUEST, json, error.to_owned()).into_response();
                    }
                    let answer = if body.contains("escaped") {
                        escaped
                    } else {
                        plain
                    };
                    (StatusCode::OK, json, answer).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("id", "secret", None, None, "test"))
            .endpoint_url(format!("http://{address}"))
            .http_client(
                DecodingHttpClient::new(clickheatmap_tls::aws_http_client(), 1 << 20)
                    .with_body_idle_timeout(Duration::from_millis(300)),
            )
            .build();
        let client = aws_sdk_kinesis::Client::from_conf(config);

        let records = |batch: &crate::kinesis::RecordBatch| -> Vec<(String, Vec<u8>)> {
            batch
                .records
                .iter()
                .map(|r| (r.sequence_number.clone(), r.data.to_vec()))
                .collect()
        };
        let expected = vec![
            ("11".to_owned(), b"{\"page\":\"/\"}\n".to_vec()),
            ("12".to_owned(), vec![0xff, 0xff]),
        ];
        let source = crate::kinesis::KinesisSource::from_client(client.clone(), "stream");
        for iterator in ["plain", "escaped"] {
            let batch = source.get_records(iterator, 10).await.expect(iterator);
            assert_eq!(records(&batch), expected, "{iterator}");
            assert_eq!(batch.next_iterator.as_deref(), Some("next"));
            assert_eq!(batch.millis_behind_latest, Some(7));
        }
        // Which way each went.
        for (iterator, decoded_here) in [("plain", true), ("escaped", false)] {
            let take = TakeDecodedRecords::default();
            let slot = take.slot();
            let output = client
                .get_records()
                .shard_iterator(iterator)
                .customize()
                .interceptor(take)
                .send()
                .await
                .expect(iterator);
            let taken = slot.lock().expect("slot").take();
            assert_eq!(taken.is_some(), decoded_here, "{iterator}");
            assert_eq!(output.records.is_empty(), decoded_here, "{iterator}");
        }
        assert!(matches!(
            source.get_records("expired", 10).await,
            Err(crate::kinesis::KinesisError::ExpiredIterator)
        ));
        // A body that stalls is an error (the SDK retries it, then gives up), not a hang.
        let stalled =
            tokio::time::timeout(Duration::from_secs(30), source.get_records("stalled", 10))
                .await
                .expect("a stalled body ends the call");
        assert!(stalled.is_err(), "{stalled:?}");
    }

    #[test]
    fn a_buffer_is_refilled_only_once_its_records_are_gone() {
        let buffers = ResponseBuffers::new(100);
        let handed_out = |buffer: BytesMut| {
            let capacity = buffer.capacity();
            (buffer.freeze(), capacity)
        };
        let mut first = buffers.take(40);
        first.extend_from_slice(&[1; 40]);
        let (first, capacity) = handed_out(first);
        let record = first.slice(0..10);
        let address = first.as_ptr();
        buffers.keep(first, capacity);
        // A record still holds it: a new buffer.
        let second = buffers.take(40);
        assert_ne!(second.as_ptr(), address);
        drop(record);
        // Free now, and large enough: the same memory, empty.
        let reused = buffers.take(40);
        assert_eq!((reused.as_ptr(), reused.len()), (address, 0));
        let (reused, capacity) = handed_out(reused);
        buffers.keep(reused, capacity);
        // Too small for what is asked, or four times too large: a new one.
        assert_ne!(buffers.take(400).as_ptr(), address);
        assert_ne!(buffers.take(5).as_ptr(), address);
        assert_eq!(buffers.take(30).as_ptr(), address);
        // The limit counts capacity, not what a response filled.
        let small = Bytes::from(vec![0; 10]);
        buffers.keep(small.clone(), 60);
        buffers.keep(small.clone(), 60);
        assert_eq!(buffers.kept.lock().expect("kept").len(), 1);
    }

    proptest! {
        #[test]
        fn any_records_round_trip(
            records in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..64), 0u64..u64::MAX), 0..20),
            behind in 0i64..1_000_000,
            spaced in any::<bool>(),
        ) {
            let items: Vec<serde_json::Value> = records
                .iter()
                .map(|(data, seq)| serde_json::json!({
                    "Data": encode(data),
                    "SequenceNumber": seq.to_string(),
                    "PartitionKey": "a \"quoted\" \\ key",
                    "ApproximateArrivalTimestamp": 1.7e9,
                }))
                .collect();
            let value = serde_json::json!({
                "Records": items,
                "MillisBehindLatest": behind,
                "NextShardIterator": "AAA/==",
            });
            let body = if spaced {
                serde_json::to_string_pretty(&value).expect("json")
            } else {
                serde_json::to_string(&value).expect("json")
            };
            check(&body);
        }
    }
}
