//! A test-only HTTP client wrapper for one moto gap: moto's kinesisanalyticsv2 answers with
//! timestamps as ISO-8601 strings (`"2026-11-25T09:59:34.777158"`), where the AWS JSON protocol
//! (and so the Rust SDK) expects epoch seconds. Without this, no response of that service can be
//! parsed. The wrapper rewrites such values to epoch seconds in kinesisanalyticsv2 responses
//! only; every other response passes through untouched.

use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::Response;

#[derive(Debug)]
pub struct FixTimestamps {
    pub inner: SharedHttpClient,
}

impl HttpClient for FixTimestamps {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(FixConnector {
            inner: self.inner.http_connector(settings, components),
        })
    }
}

#[derive(Debug)]
struct FixConnector {
    inner: SharedHttpConnector,
}

impl HttpConnector for FixConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let flink = request
            .headers()
            .get("x-amz-target")
            .is_some_and(|target| target.starts_with("KinesisAnalytics_20180523"));
        let inner = self.inner.clone();
        HttpConnectorFuture::new(async move {
            let mut response = inner.call(request).await?;
            if !flink {
                return Ok(response);
            }
            let body = response.take_body();
            let bytes = ByteStream::new(body)
                .collect()
                .await
                .map_err(|e| ConnectorError::other(e.into(), None))?
                .into_bytes();
            let fixed = match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(mut value) => {
                    rewrite(&mut value);
                    serde_json::to_vec(&value).unwrap_or_else(|_| bytes.to_vec())
                }
                Err(_) => bytes.to_vec(),
            };
            let mut fixed_response = Response::new(
                response.status(),
                ByteStream::from(fixed.clone()).into_inner(),
            );
            for (name, value) in response.headers().iter() {
                if !name.eq_ignore_ascii_case("content-length") {
                    fixed_response
                        .headers_mut()
                        .insert(name.to_owned(), value.to_owned());
                }
            }
            fixed_response
                .headers_mut()
                .insert("content-length", fixed.len().to_string());
            Ok(fixed_response)
        })
    }
}

fn rewrite(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if key.ends_with("Timestamp")
                    && let Some(seconds) = item.as_str().and_then(epoch_seconds)
                {
                    *item = serde_json::json!(seconds);
                } else {
                    rewrite(item);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(rewrite),
        _ => {}
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]` (UTC) as epoch seconds.
fn epoch_seconds(text: &str) -> Option<f64> {
    let (date, time) = text.split_once(['T', ' '])?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    let fraction: f64 = format!("0.{fraction}").parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3600 + minute * 60 + second) as f64 + fraction)
}
