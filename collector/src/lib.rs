//! The click collector: the HTTP endpoint that web pages send clicks to.
//!
//! The original demo put AWS keys with full access into the page so that the browser could call
//! Kinesis itself. The collector removes that: pages load a small script
//! (`GET /v1/snippet.js`) that posts clicks to `POST /v1/clicks`; the collector checks them with
//! the aggregator's own parser ([`clickheatmap_model::event::parse_record`]), so it accepts
//! exactly what the aggregator counts, and forwards the accepted ones — original JSON, one event
//! per NDJSON line, many events per record — to a Kinesis data stream with its own credentials
//! (IRSA / Pod Identity). The data contract is docs/ARCHITECTURE.md's click event.
//!
//! What it guards against: malformed or hostile bodies (size limit, strict JSON, per-event
//! checks, 4xx answers in JSON that say why), floods (a token bucket per client address),
//! other sites posting into your heatmap (an allowed-origins list; credentials never allowed),
//! and lost clicks (a 202 means the events are queued; a full queue answers 503 instead of
//! dropping, failed records are retried with backoff for as long as the process runs, and a
//! shutdown drains the queue).
//!
//! Modules: [`server`] (routes, CORS, lifecycle), `http1` (connections: the click path's own
//! HTTP/1.1, hyper for the rest), [`ingest`] (body → events), [`ratelimit`],
//! [`queue`] (bounded buffer, batching, retries), [`sink`] (the [`RecordSink`] trait,
//! [`ChannelSink`], [`StdoutSink`]), [`kinesis`] ([`KinesisSink`]), [`metrics`], [`config`],
//! [`client`] (a minimal loopback HTTP client) and [`bench`].

pub mod bench;
pub mod client;
pub mod config;
mod http1;
pub mod ingest;
pub mod json;
#[cfg(feature = "kinesis")]
pub mod kinesis;
pub mod metrics;
pub mod queue;
pub mod ratelimit;
pub mod server;
pub mod sink;

pub use config::{
    AllowedOrigins, CollectorConfig, ConfigError, QueueConfig, RateLimitConfig, RetryPolicy,
};
#[cfg(feature = "kinesis")]
pub use kinesis::KinesisSink;
pub use queue::DrainReport;
pub use server::{Collector, CollectorError};
pub use sink::{ChannelSink, PutError, PutResults, RecordSink, SinkFuture, SinkLimits, StdoutSink};

/// The browser snippet served at `GET /v1/snippet.js`.
pub const SNIPPET_JS: &str = include_str!("snippet.js");

/// A random 64-bit seed (from the standard library's randomly keyed hasher).
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// One step of SplitMix64: a fast, well-mixed 64-bit sequence (jitter, partition keys).
pub(crate) fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
