//! A token bucket per client, counted in events.
//!
//! A request is let in while its client's bucket holds at least one token (checked before the
//! body is read), and then charged one token per event in it. A batch larger than what is left
//! may take the bucket below zero (as long as the bucket held the smaller of the batch and the
//! burst), so big batches are not refused forever but the long-run rate still holds: the client
//! waits until the debt is paid back.
//!
//! Clients are keyed by IPv4 address, or by /64 prefix for IPv6 (one host usually holds a whole
//! /64). The table is bounded: idle buckets (full again) are forgotten when it grows past its
//! limit.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;

/// Most clients tracked at once before idle ones are forgotten.
const MAX_CLIENTS: usize = 100_000;

#[derive(Debug)]
pub struct RateLimiter {
    config: Option<RateLimitConfig>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// A limiter; `None` lets everything through.
    pub fn new(config: Option<RateLimitConfig>) -> Self {
        RateLimiter {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `client` may send a request now; `Err` holds how long to wait.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(config) = self.config else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = refill(&mut buckets, key(client), &config, now);
        if bucket.tokens >= 1.0 {
            Ok(())
        } else {
            Err(wait_for(1.0 - bucket.tokens, &config))
        }
    }

    /// Charges `events` tokens to `client`; `Err` (nothing charged) holds how long to wait.
    pub fn charge(&self, client: IpAddr, events: u64, now: Instant) -> Result<(), Duration> {
        let Some(config) = self.config else {
            return Ok(());
        };
        let cost = events.max(1) as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = refill(&mut buckets, key(client), &config, now);
        let needed = cost.min(config.burst);
        if bucket.tokens >= needed {
            bucket.tokens -= cost;
            Ok(())
        } else {
            Err(wait_for(needed - bucket.tokens, &config))
        }
    }

    /// Gives back tokens charged for a request that was not served after all (queue full).
    pub fn refund(&self, client: IpAddr, events: u64) {
        let Some(config) = self.config else {
            return;
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = buckets.get_mut(&key(client)) {
            bucket.tokens = (bucket.tokens + events.max(1) as f64).min(config.burst);
        }
    }

    /// Clients tracked now.
    pub fn tracked_clients(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn refill<'m>(
    buckets: &'m mut HashMap<IpAddr, Bucket>,
    client: IpAddr,
    config: &RateLimitConfig,
    now: Instant,
) -> &'m mut Bucket {
    if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
        forget_idle(buckets, config, now);
    }
    let bucket = buckets.entry(client).or_insert(Bucket {
        tokens: config.burst,
        updated: now,
    });
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * config.events_per_second).min(config.burst);
    // Requests that overlap may call with instants out of order; time never goes back, so an
    // earlier instant refills nothing and credits nothing twice.
    bucket.updated = bucket.updated.max(now);
    bucket
}

/// Drops buckets that are full again (a new bucket would be the same); if that is not enough
/// (many active clients at once), drops them all rather than grow without bound.
fn forget_idle(buckets: &mut HashMap<IpAddr, Bucket>, config: &RateLimitConfig, now: Instant) {
    buckets.retain(|_, bucket| {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens + elapsed * config.events_per_second < config.burst
    });
    if buckets.len() >= MAX_CLIENTS {
        tracing::warn!(
            clients = buckets.len(),
            "rate limiter: too many active clients; forgetting them all"
        );
        buckets.clear();
    }
}

fn wait_for(tokens: f64, config: &RateLimitConfig) -> Duration {
    Duration::from_secs_f64((tokens / config.events_per_second).clamp(0.001, 3600.0))
}

/// The client key: the address itself for IPv4 (and IPv4-mapped IPv6), the /64 for IPv6.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter::new(Some(RateLimitConfig {
            events_per_second: rate,
            burst,
        }))
    }

    #[test]
    fn a_bucket_empties_refills_and_is_per_client() {
        let limiter = limiter(10.0, 20.0);
        let start = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.charge(a, 20, start).is_ok());
        assert!(limiter.check(a, start).is_err());
        assert!(limiter.charge(a, 1, start).is_err());
        assert!(limiter.check(b, start).is_ok());
        let wait = limiter.check(a, start).unwrap_err();
        assert!(wait <= Duration::from_millis(101), "{wait:?}");
        assert!(limiter.check(a, start + Duration::from_millis(100)).is_ok());
        assert!(
            limiter
                .charge(a, 1, start + Duration::from_millis(100))
                .is_ok()
        );
    }

    #[test]
    fn big_batches_go_into_debt_and_wait_it_off() {
        let limiter = limiter(10.0, 20.0);
        let start = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limiter.charge(a, 50, start).is_ok());
        // 30 tokens of debt: 3 s to get back to zero, and 0.1 s more for the next event.
        assert!(limiter.check(a, start + Duration::from_secs(3)).is_err());
        assert!(
            limiter
                .check(a, start + Duration::from_millis(3100))
                .is_ok()
        );
    }

    #[test]
    fn ipv6_clients_are_grouped_by_64_prefix() {
        let limiter = limiter(1.0, 1.0);
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.charge(a, 1, now).is_ok());
        assert!(limiter.charge(b, 1, now).is_err());
        assert!(limiter.charge(c, 1, now).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn disabled_limiter_lets_everything_through() {
        let limiter = RateLimiter::new(None);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..1000 {
            assert!(limiter.charge(a, 1000, Instant::now()).is_ok());
        }
        assert_eq!(limiter.tracked_clients(), 0);
    }
}
