//! The collector's settings as a library type. The binary fills it from flags and environment
//! variables (`main.rs`); tests and the benchmark build it directly.

use std::collections::HashSet;
use std::time::Duration;

use clickheatmap_model::event::Limits;

use crate::sink::SinkLimits;

/// Everything the HTTP side and the outgoing queue need.
#[derive(Clone, Debug)]
pub struct CollectorConfig {
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub body_limit_bytes: usize,
    /// Per-event bounds, checked by the aggregator's parser (`max_record_bytes` is ignored: the
    /// body limit plays that part).
    pub limits: Limits,
    /// Browser origins allowed to post clicks.
    pub allowed_origins: AllowedOrigins,
    /// Per-client token bucket, in events; `None` turns rate limiting off.
    pub rate_limit: Option<RateLimitConfig>,
    /// How many proxies in front of the collector append to `X-Forwarded-For`. 0 (the default)
    /// ignores the header, so a client cannot pick its own address.
    pub forwarded_for_hops: usize,
    /// How long a request's head, and then its body, may take to arrive once it has begun (the
    /// connection is closed after a slow head, a slow body gets 408).
    pub body_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request. Longer than the idle
    /// timeout of the load balancer in front (60 s on an AWS ALB), so that the balancer, not the
    /// collector, closes idle connections and never reuses one the collector just closed.
    pub idle_timeout: Duration,
    /// Plain click posts on the collector's own HTTP/1.1 path (`http1.rs`); `false` serves every
    /// request through hyper and axum (slower; the way to rule the own path out when
    /// diagnosing a client).
    pub fast_click_path: bool,
    /// The outgoing buffer.
    pub queue: QueueConfig,
    /// How long open HTTP connections may take to finish after a shutdown signal.
    pub http_grace: Duration,
    /// How long the final drain of the queue may take on shutdown.
    pub drain_timeout: Duration,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            body_limit_bytes: 1024 * 1024,
            limits: Limits::default(),
            allowed_origins: AllowedOrigins::default(),
            rate_limit: Some(RateLimitConfig::default()),
            forwarded_for_hops: 0,
            body_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            fast_click_path: true,
            queue: QueueConfig::default(),
            http_grace: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

impl CollectorConfig {
    /// Checks the settings against each other and against what the sink can take.
    pub fn validate(&self, sink: &SinkLimits) -> Result<(), ConfigError> {
        if self.body_limit_bytes == 0 {
            return Err(ConfigError::Invalid(
                "the body limit must be at least 1 byte".into(),
            ));
        }
        if self.limits.max_event_bytes >= sink.max_record_bytes {
            return Err(ConfigError::Invalid(format!(
                "the event limit ({} bytes) must be below the sink's record limit ({} bytes)",
                self.limits.max_event_bytes, sink.max_record_bytes
            )));
        }
        let queue = &self.queue;
        if queue.record_target_bytes == 0 || queue.record_target_bytes > sink.max_record_bytes {
            return Err(ConfigError::Invalid(format!(
                "the record target ({} bytes) must be between 1 and the sink's record limit ({} bytes)",
                queue.record_target_bytes, sink.max_record_bytes
            )));
        }
        if queue.capacity_events == 0 || queue.capacity_bytes < self.body_limit_bytes {
            return Err(ConfigError::Invalid(format!(
                "the queue must hold at least one event and one full body ({} bytes); it holds {} events and {} bytes",
                self.body_limit_bytes, queue.capacity_events, queue.capacity_bytes
            )));
        }
        if queue.flush_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "the flush interval must be above zero".into(),
            ));
        }
        if self.idle_timeout.is_zero() || self.body_read_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "the idle and read timeouts must be above zero".into(),
            ));
        }
        let retry = &queue.retry;
        if retry.initial_backoff.is_zero() || retry.max_backoff < retry.initial_backoff {
            return Err(ConfigError::Invalid(
                "backoff: the initial delay must be above zero and at most the maximum".into(),
            ));
        }
        if retry.budget == 0 {
            return Err(ConfigError::Invalid(
                "the retry budget must be at least 1 attempt".into(),
            ));
        }
        if let Some(rate) = &self.rate_limit {
            let finite = rate.events_per_second.is_finite() && rate.burst.is_finite();
            if !finite || rate.events_per_second <= 0.0 || rate.burst < 1.0 {
                return Err(ConfigError::Invalid(format!(
                    "rate limit: events per second must be above 0 and the burst at least 1 (got {} and {})",
                    rate.events_per_second, rate.burst
                )));
            }
        }
        Ok(())
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "invalid origin {origin:?}: {why} (write it like https://shop.example.com or http://localhost:3000)"
    )]
    Origin { origin: String, why: &'static str },
    #[error("{0}")]
    Invalid(String),
}

/// Which browser origins may post clicks. Requests without an `Origin` header (not from a
/// browser) and same-origin requests are always allowed; credentials never are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    any: bool,
    exact: HashSet<String>,
}

impl AllowedOrigins {
    /// Parses a list of exact origins (`scheme://host[:port]`); `*` allows every origin and must
    /// be given on its own, on purpose.
    pub fn parse<S: AsRef<str>>(origins: &[S]) -> Result<Self, ConfigError> {
        let mut allowed = AllowedOrigins::default();
        for origin in origins {
            let origin = origin.as_ref().trim();
            if origin.is_empty() {
                continue;
            }
            if origin == "*" {
                allowed.any = true;
                continue;
            }
            allowed.exact.insert(normalize_origin(origin)?);
        }
        Ok(allowed)
    }

    /// Every origin.
    pub fn any() -> Self {
        AllowedOrigins {
            any: true,
            exact: HashSet::new(),
        }
    }

    pub fn allows_any(&self) -> bool {
        self.any
    }

    pub fn is_empty(&self) -> bool {
        !self.any && self.exact.is_empty()
    }

    /// Whether a request's `Origin` header value is allowed by the list.
    pub fn allows(&self, origin: &str) -> bool {
        self.any || self.exact.contains(&origin.to_ascii_lowercase())
    }
}

fn normalize_origin(origin: &str) -> Result<String, ConfigError> {
    let error = |why| ConfigError::Origin {
        origin: origin.to_owned(),
        why,
    };
    let (scheme, rest) = origin.split_once("://").ok_or_else(|| error("no scheme"))?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(error("bad scheme"));
    }
    if rest.is_empty() {
        return Err(error("no host"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(error("an origin has no path, query or fragment"));
    }
    if rest.contains(|c: char| c.is_whitespace() || c.is_control()) || rest.contains('@') {
        return Err(error("bad host"));
    }
    Ok(origin.to_ascii_lowercase())
}

/// A token bucket per client address, counted in events: it refills at `events_per_second` and
/// holds at most `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimitConfig {
    pub events_per_second: f64,
    pub burst: f64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        // A person clicks a few times a second at most; a page's batch of a few seconds of clicks
        // fits in the burst.
        RateLimitConfig {
            events_per_second: 20.0,
            burst: 200.0,
        }
    }
}

/// The bounded in-memory buffer between the HTTP side and the sink.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Events held (accepted but not yet acknowledged by the sink) before requests get 503.
    pub capacity_events: usize,
    /// Bytes of NDJSON held before requests get 503.
    pub capacity_bytes: usize,
    /// A record is closed when the next event would take it past this size.
    pub record_target_bytes: usize,
    /// The open record is closed and sent at the latest this long after its first event.
    pub flush_interval: Duration,
    pub retry: RetryPolicy,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity_events: 200_000,
            capacity_bytes: 64 * 1024 * 1024,
            record_target_bytes: 64 * 1024,
            flush_interval: Duration::from_millis(500),
            retry: RetryPolicy::default(),
        }
    }
}

/// Exponential backoff with jitter for records the sink did not take.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Attempts after which a failing record is reported at error level (and counted); it is
    /// still retried, at the maximum backoff, for as long as the process runs.
    pub budget: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            budget: 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact_and_case_insensitive() {
        let origins =
            AllowedOrigins::parse(&["https://Shop.example.com", "http://localhost:3000"]).unwrap();
        assert!(origins.allows("https://shop.example.com"));
        assert!(origins.allows("http://localhost:3000"));
        assert!(!origins.allows("http://shop.example.com"));
        assert!(!origins.allows("https://shop.example.com.evil.test"));
        assert!(!origins.allows("null"));
        assert!(!origins.allows_any());
        assert!(AllowedOrigins::parse(&["*"]).unwrap().allows("null"));
    }

    #[test]
    fn bad_origins_are_refused() {
        for bad in [
            "shop.example.com",
            "https://",
            "https://shop.example.com/",
            "https://a/b",
            "1http://a",
            "https://user@a",
        ] {
            assert!(AllowedOrigins::parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_valid() {
        CollectorConfig::default()
            .validate(&SinkLimits::KINESIS)
            .unwrap();
    }

    #[test]
    fn zero_timeouts_are_refused() {
        for config in [
            CollectorConfig {
                idle_timeout: Duration::ZERO,
                ..CollectorConfig::default()
            },
            CollectorConfig {
                body_read_timeout: Duration::ZERO,
                ..CollectorConfig::default()
            },
        ] {
            let refused = config.validate(&SinkLimits::KINESIS);
            assert!(
                matches!(&refused, Err(ConfigError::Invalid(why)) if why.contains("timeouts")),
                "{refused:?}"
            );
        }
    }
}
