//! Client-side rate limits for the AWS control-plane APIs.
//!
//! AWS rate-limits control-plane calls per account and region (Kinesis `CreateStream` and the
//! tagging calls at five per second, Firehose, Glue and Athena similar). A thousand pipelines
//! created at once would otherwise start their reconciles together and be throttled — or, against
//! a slow endpoint, time out by the thousand. Each service's SDK client of a region therefore
//! sends its requests through one [`TokenBucket`]: requests wait their turn instead of failing,
//! and the SDK's own retries (on throttling) wait in the same queue.
//!
//! The limit sits in the HTTP layer ([`RateLimitedHttpClient`]) so that every operation of every
//! reconciler is covered without touching a call site.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::config::RuntimeComponents;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use tokio::time::Instant;

/// Requests per second, with a burst of one second's worth.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// May go negative: each waiter reserves its token before sleeping, so waiters are served
    /// in arrival order without a queue.
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(per_second: f64) -> TokenBucket {
        let per_second = per_second.max(0.01);
        TokenBucket {
            per_second,
            state: Mutex::new(BucketState {
                tokens: per_second.max(1.0),
                updated: Instant::now(),
            }),
        }
    }

    /// Takes a token now and says how long to wait before using it.
    fn reserve(&self) -> Duration {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let burst = self.per_second.max(1.0);
        let refill = now.duration_since(state.updated).as_secs_f64() * self.per_second;
        state.tokens = (state.tokens + refill).min(burst);
        state.updated = now;
        state.tokens -= 1.0;
        if state.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.tokens / self.per_second)
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Calls per second per service (keys as in [`RateLimits::SERVICES`]). Defaults follow the AWS
/// quotas of the control-plane calls the operator makes, per account and region.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimits {
    per_service: BTreeMap<String, f64>,
}

impl RateLimits {
    /// The services that can be limited, with their default rates.
    pub const SERVICES: [(&'static str, f64); 7] = [
        ("kinesis", 5.0),
        ("firehose", 5.0),
        ("glue", 10.0),
        ("athena", 5.0),
        ("s3", 50.0),
        ("sts", 10.0),
        ("kinesisanalyticsv2", 5.0),
    ];

    /// Defaults overridden by `service=rate` entries (e.g. `kinesis=20`).
    pub fn parse(overrides: &[String]) -> Result<RateLimits, String> {
        let mut per_service: BTreeMap<String, f64> = Self::SERVICES
            .iter()
            .map(|(service, rate)| ((*service).to_owned(), *rate))
            .collect();
        for entry in overrides.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (service, rate) = entry
                .split_once('=')
                .ok_or_else(|| format!("`{entry}`: expected SERVICE=CALLS_PER_SECOND"))?;
            let service = service.trim().to_ascii_lowercase();
            if !per_service.contains_key(&service) {
                let known: Vec<&str> = Self::SERVICES.iter().map(|(s, _)| *s).collect();
                return Err(format!(
                    "`{entry}`: unknown service `{service}` (one of {})",
                    known.join(", ")
                ));
            }
            let rate: f64 = rate
                .trim()
                .parse()
                .ok()
                .filter(|rate: &f64| rate.is_finite() && *rate > 0.0)
                .ok_or_else(|| format!("`{entry}`: the rate must be a number above 0"))?;
            per_service.insert(service, rate);
        }
        Ok(RateLimits { per_service })
    }

    pub fn rate(&self, service: &str) -> Option<f64> {
        self.per_service.get(service).copied()
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits::parse(&[]).unwrap_or(RateLimits {
            per_service: BTreeMap::new(),
        })
    }
}

/// An HTTP client whose requests each wait for a token of one bucket.
#[derive(Clone)]
pub struct RateLimitedHttpClient {
    inner: SharedHttpClient,
    bucket: Arc<TokenBucket>,
}

impl RateLimitedHttpClient {
    pub fn new(inner: SharedHttpClient, bucket: Arc<TokenBucket>) -> RateLimitedHttpClient {
        RateLimitedHttpClient { inner, bucket }
    }
}

impl fmt::Debug for RateLimitedHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitedHttpClient")
            .field("per_second", &self.bucket.per_second)
            .finish_non_exhaustive()
    }
}

impl HttpClient for RateLimitedHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(RateLimitedConnector {
            inner: self.inner.http_connector(settings, components),
            bucket: self.bucket.clone(),
        })
    }
}

#[derive(Debug)]
struct RateLimitedConnector {
    inner: SharedHttpConnector,
    bucket: Arc<TokenBucket>,
}

impl HttpConnector for RateLimitedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let inner = self.inner.clone();
        let bucket = self.bucket.clone();
        HttpConnectorFuture::new(async move {
            bucket.acquire().await;
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let limits = RateLimits::parse(&["kinesis=20".to_owned(), " glue = 2.5 ".to_owned()])
            .expect("valid");
        assert_eq!(limits.rate("kinesis"), Some(20.0));
        assert_eq!(limits.rate("glue"), Some(2.5));
        assert_eq!(limits.rate("firehose"), Some(5.0));
        assert_eq!(RateLimits::default().rate("s3"), Some(50.0));
    }

    #[test]
    fn bad_overrides_say_what_is_wrong() {
        let error = RateLimits::parse(&["dynamodb=3".to_owned()]).unwrap_err();
        assert!(error.contains("unknown service `dynamodb`"), "{error}");
        let error = RateLimits::parse(&["kinesis=0".to_owned()]).unwrap_err();
        assert!(error.contains("above 0"), "{error}");
        let error = RateLimits::parse(&["kinesis".to_owned()]).unwrap_err();
        assert!(error.contains("SERVICE=CALLS_PER_SECOND"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_spaces_requests_after_its_burst() {
        let bucket = TokenBucket::new(4.0);
        let started = Instant::now();
        for _ in 0..12 {
            bucket.acquire().await;
        }
        // Four at once (the burst), then eight more at four per second.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1990) && elapsed <= Duration::from_millis(2100),
            "{elapsed:?}"
        );
    }
}
