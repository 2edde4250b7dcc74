//! The live feed: counts of windows the aggregator still holds open, fetched from its
//! `GET /v1/live?page=<id>` endpoint and passed on to the browser at `/api/live`.
//!
//! The contract:
//!
//! ```json
//! {"columns":20,"rows":20,"cells":[[3,4,12],[0,0,1]],"watermark_ms":1766919060000}
//! ```
//!
//! `cells` are `[grid_x, grid_y, clicks]` of windows not yet written to the curated table, so
//! adding them to a stored result shows clicks within seconds. Responses are checked (sizes,
//! grid bounds, non-negative counts) before they reach the browser.
//!
//! Several aggregator replicas each hold the shards they read, so the client can ask several
//! endpoints (one per replica) and sums their answers; a replica that does not answer leaves its
//! shards out rather than taking live mode down, as long as one answers.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::params::PageId;

/// How long one live request may take; the browser polls every second.
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest live response accepted.
pub const MAX_LIVE_BYTES: usize = 4 * 1024 * 1024;

/// Largest grid side accepted (the aggregator's own limit).
pub const MAX_GRID_SIDE: u16 = 1000;

/// What the aggregator reports for one page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSnapshot {
    pub columns: u16,
    pub rows: u16,
    /// `(grid_x, grid_y, clicks)`.
    pub cells: Vec<(i32, i32, i64)>,
    /// The aggregator's watermark: windows ending after it are still open.
    #[serde(default)]
    pub watermark_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("--live-url {url:?} is not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("the live endpoint did not answer: {0}")]
    Request(#[source] reqwest::Error),
    #[error("the live endpoint answered {status}")]
    Status { status: u16 },
    #[error("the live response is larger than {MAX_LIVE_BYTES} bytes")]
    TooLarge,
    #[error("the live response is not the expected JSON: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("the live response is inconsistent: {0}")]
    Invalid(String),
}

/// Fetches live snapshots from the aggregator replicas.
#[derive(Debug, Clone)]
pub struct LiveClient {
    http: reqwest::Client,
    urls: Vec<Url>,
}

fn parse_endpoint(url: &str) -> Result<Url, LiveError> {
    let bad = || LiveError::BadUrl {
        url: url.to_owned(),
    };
    let parsed = Url::parse(url.trim()).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(bad());
    }
    Ok(parsed)
}

impl LiveClient {
    /// `url` is the endpoint itself, e.g. `http://aggregator:9090/v1/live`.
    pub fn new(url: &str) -> Result<LiveClient, LiveError> {
        LiveClient::with_endpoints(&[url])
    }

    /// One endpoint per aggregator replica; at least one.
    pub fn with_endpoints<S: AsRef<str>>(urls: &[S]) -> Result<LiveClient, LiveError> {
        let urls = urls
            .iter()
            .map(|url| parse_endpoint(url.as_ref()))
            .collect::<Result<Vec<Url>, LiveError>>()?;
        if urls.is_empty() {
            return Err(LiveError::BadUrl { url: String::new() });
        }
        // reqwest is built without a provider of its own: it uses the process default, which
        // the viewer's and local mode's main install; a library caller may not have.
        clickheatmap_tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(LIVE_TIMEOUT)
            .connect_timeout(LIVE_TIMEOUT)
            .build()
            .map_err(LiveError::Client)?;
        Ok(LiveClient { http, urls })
    }

    pub fn urls(&self) -> &[Url] {
        &self.urls
    }

    /// The open windows' counts for `page`, summed over every endpoint that answered.
    pub async fn fetch(&self, page: &PageId) -> Result<LiveSnapshot, LiveError> {
        let answers =
            futures_util::future::join_all(self.urls.iter().map(|url| self.fetch_one(url, page)))
                .await;
        let mut merged: Option<LiveSnapshot> = None;
        let mut first_error = None;
        for (url, answer) in self.urls.iter().zip(answers) {
            match answer {
                Ok(snapshot) => match merged.as_mut() {
                    None => merged = Some(snapshot),
                    Some(total) => total.merge(snapshot)?,
                },
                Err(error) => {
                    tracing::warn!(%url, %error, "a live endpoint did not answer; its shards are left out");
                    first_error.get_or_insert(error);
                }
            }
        }
        match (merged, first_error) {
            (Some(snapshot), _) => Ok(snapshot),
            (None, Some(error)) => Err(error),
            (None, None) => Err(LiveError::Invalid("no live endpoint".to_owned())),
        }
    }

    async fn fetch_one(&self, endpoint: &Url, page: &PageId) -> Result<LiveSnapshot, LiveError> {
        let mut url = endpoint.clone();
        url.query_pairs_mut().append_pair("page", page.as_str());
        let mut response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(LiveError::Request)?;
        let status = response.status();
        if !status.is_success() {
            return Err(LiveError::Status {
                status: status.as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|length| length > MAX_LIVE_BYTES as u64)
        {
            return Err(LiveError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(LiveError::Request)? {
            if body.len() + chunk.len() > MAX_LIVE_BYTES {
                return Err(LiveError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let snapshot: LiveSnapshot = serde_json::from_slice(&body).map_err(LiveError::Decode)?;
        snapshot.validate()?;
        Ok(snapshot)
    }
}

impl LiveSnapshot {
    /// Adds another replica's answer: counts of the same cell add up, the lower watermark wins.
    pub fn merge(&mut self, other: LiveSnapshot) -> Result<(), LiveError> {
        if (self.columns, self.rows) != (other.columns, other.rows) {
            return Err(LiveError::Invalid(format!(
                "replicas disagree on the grid: {}x{} and {}x{}",
                self.columns, self.rows, other.columns, other.rows
            )));
        }
        let mut cells: std::collections::BTreeMap<(i32, i32), i64> =
            std::collections::BTreeMap::new();
        for (x, y, clicks) in self.cells.drain(..).chain(other.cells) {
            let total = cells.entry((y, x)).or_insert(0);
            *total = total.saturating_add(clicks);
        }
        self.cells = cells
            .into_iter()
            .map(|((y, x), clicks)| (x, y, clicks))
            .collect();
        self.watermark_ms = match (self.watermark_ms, other.watermark_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(())
    }

    /// Checks the grid size, that every cell lies on the grid and that counts are not negative.
    pub fn validate(&self) -> Result<(), LiveError> {
        let side = 1..=MAX_GRID_SIDE;
        if !side.contains(&self.columns) || !side.contains(&self.rows) {
            return Err(LiveError::Invalid(format!(
                "grid {}x{}: each side must be 1 to {MAX_GRID_SIDE}",
                self.columns, self.rows
            )));
        }
        let max_cells = usize::from(self.columns) * usize::from(self.rows);
        if self.cells.len() > max_cells {
            return Err(LiveError::Invalid(format!(
                "{} cells on a {}x{} grid",
                self.cells.len(),
                self.columns,
                self.rows
            )));
        }
        for &(x, y, clicks) in &self.cells {
            if !(0..i32::from(self.columns)).contains(&x) || !(0..i32::from(self.rows)).contains(&y)
            {
                return Err(LiveError::Invalid(format!(
                    "cell ({x}, {y}) is outside the {}x{} grid",
                    self.columns, self.rows
                )));
            }
            if clicks < 0 {
                return Err(LiveError::Invalid(format!(
                    "cell ({x}, {y}) has {clicks} clicks"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http() {
        assert!(LiveClient::new("http://127.0.0.1:9090/v1/live").is_ok());
        assert!(LiveClient::new("https://aggregator.example/v1/live").is_ok());
        for bad in ["", "ftp://x/y", "/v1/live", "http//x"] {
            assert!(LiveClient::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshots_are_checked() {
        let ok = LiveSnapshot {
            columns: 2,
            rows: 2,
            cells: vec![(1, 1, 3)],
            watermark_ms: Some(5),
        };
        assert!(ok.validate().is_ok());
        for cells in [vec![(2, 0, 1)], vec![(0, -1, 1)], vec![(0, 0, -1)]] {
            let bad = LiveSnapshot {
                cells,
                ..ok.clone()
            };
            assert!(bad.validate().is_err());
        }
        let empty_grid = LiveSnapshot {
            columns: 0,
            ..ok.clone()
        };
        assert!(empty_grid.validate().is_err());
        let parsed: LiveSnapshot =
            serde_json::from_str(r#"{"columns":20,"rows":20,"cells":[[3,4,12]],"watermark_ms":1}"#)
                .unwrap();
        assert_eq!(parsed.cells, vec![(3, 4, 12)]);
    }

    #[test]
    fn replicas_answers_add_up() {
        let mut total = LiveSnapshot {
            columns: 4,
            rows: 4,
            cells: vec![(1, 0, 2), (0, 1, 1)],
            watermark_ms: Some(50),
        };
        total
            .merge(LiveSnapshot {
                columns: 4,
                rows: 4,
                cells: vec![(1, 0, 3), (3, 3, 1)],
                watermark_ms: Some(40),
            })
            .unwrap();
        assert_eq!(total.cells, vec![(1, 0, 5), (0, 1, 1), (3, 3, 1)]);
        assert_eq!(total.watermark_ms, Some(40));
        let other_grid = LiveSnapshot {
            columns: 5,
            ..total.clone()
        };
        assert!(total.merge(other_grid).is_err());
        assert!(LiveClient::with_endpoints::<&str>(&[]).is_err());
        assert!(
            LiveClient::with_endpoints(&["http://a:9090/v1/live", "http://b:9090/v1/live"]).is_ok()
        );
        assert!(LiveClient::with_endpoints(&["http://a:9090/v1/live", "nope"]).is_err());
    }
}
