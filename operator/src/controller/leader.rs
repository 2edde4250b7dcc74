//! Leader election on the Lease `clickheatmap-operator` in the operator's namespace.
//!
//! A plain acquire/renew loop: the lease lasts [`LEASE_DURATION`], the holder renews it every
//! [`RENEW_INTERVAL`]; a candidate takes it over once it has expired. Every write is a `replace`
//! with the observed `resourceVersion`, so two candidates cannot both win (the loser gets a 409
//! and tries again). A holder that cannot renew in time stops: [`LeaderElector::keep`] returns
//! and the process exits, so that two leaders never reconcile at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{debug, warn};

use super::ControllerError;

/// The Lease's name.
pub const LEASE_NAME: &str = "clickheatmap-operator";
/// How long a lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and a candidate retries).
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);

/// What to do with the lease as observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No lease yet: create it.
    Create,
    /// Held by someone else and expired, or held by nobody: take it over.
    TakeOver,
    /// Held by us: renew.
    Renew,
    /// Held by someone else and still valid: wait.
    Wait,
}

/// The pure decision.
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Decision::TakeOver,
        Some(holder) if holder == identity => Decision::Renew,
        Some(_) => {
            let duration = i64::from(
                spec.lease_duration_seconds
                    .unwrap_or(LEASE_DURATION.as_secs() as i32),
            );
            match &spec.renew_time {
                Some(MicroTime(renewed))
                    if *renewed + SignedDuration::from_secs(duration) > now =>
                {
                    Decision::Wait
                }
                _ => Decision::TakeOver,
            }
        }
    }
}

/// The spec to write for a decision (`None` for [`Decision::Wait`]).
pub fn next_spec(
    current: Option<&LeaseSpec>,
    decision: Decision,
    identity: &str,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let duration = Some(LEASE_DURATION.as_secs() as i32);
    match decision {
        Decision::Wait => None,
        Decision::Renew => {
            let mut spec = current.cloned().unwrap_or_default();
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = duration;
            Some(spec)
        }
        Decision::Create | Decision::TakeOver => Some(LeaseSpec {
            holder_identity: Some(identity.to_owned()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: duration,
            lease_transitions: Some(
                current.and_then(|spec| spec.lease_transitions).unwrap_or(0)
                    + i32::from(decision == Decision::TakeOver),
            ),
            ..LeaseSpec::default()
        }),
    }
}

/// One candidate.
pub struct LeaderElector {
    api: Api<Lease>,
    identity: String,
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, identity: &str) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            identity: identity.to_owned(),
        }
    }

    /// One round: true when we hold the lease afterwards.
    async fn try_once(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(LEASE_NAME).await?;
        let decision = decide(
            current.as_ref().and_then(|lease| lease.spec.as_ref()),
            &self.identity,
            now,
        );
        debug!(?decision, "lease");
        let Some(spec) = next_spec(
            current.as_ref().and_then(|lease| lease.spec.as_ref()),
            decision,
            &self.identity,
            now,
        ) else {
            return Ok(false);
        };
        match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.to_owned()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await?;
            }
            Some(mut lease) => {
                // Keeps metadata.resourceVersion: a concurrent writer makes this fail with 409.
                lease.spec = Some(spec);
                self.api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await?;
            }
        }
        Ok(true)
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&self) -> Result<(), ControllerError> {
        loop {
            match self.try_once().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(error) => warn!(%error, "lease round failed"),
            }
            tokio::time::sleep(RENEW_INTERVAL).await;
        }
    }

    /// Renews until the lease is lost or cannot be renewed in time; returns why.
    pub async fn keep(self) -> ControllerError {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_INTERVAL).await;
            match self.try_once().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    return ControllerError::Startup(
                        "the leader lease was taken over by another replica".to_owned(),
                    );
                }
                Err(error) => warn!(%error, "cannot renew the leader lease"),
            }
            // Stop before the lease can expire under us (one renew interval of margin).
            if last_renewed.elapsed() + RENEW_INTERVAL >= LEASE_DURATION {
                return ControllerError::Startup(
                    "the leader lease could not be renewed in time".to_owned(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.to_owned()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(2),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::from_second(1_000_000).expect("valid");
        let ago = |s: i64| now - SignedDuration::from_secs(s);
        assert_eq!(decide(None, "me", now), Decision::Create);
        assert_eq!(
            decide(Some(&held("me", ago(3))), "me", now),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&held("me", ago(60))), "me", now),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&held("other", ago(3))), "me", now),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&held("other", ago(14))), "me", now),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&held("other", ago(16))), "me", now),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "me", now),
            Decision::TakeOver
        );
    }

    #[test]
    fn takeover_counts_a_transition_and_renew_keeps_acquire_time() {
        let now = Timestamp::from_second(1_000_000).expect("valid");
        let old = held("other", now - SignedDuration::from_secs(30));
        let taken = next_spec(Some(&old), Decision::TakeOver, "me", now).expect("spec");
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(3));
        assert_eq!(taken.lease_duration_seconds, Some(15));
        let mut mine = taken.clone();
        mine.acquire_time = Some(MicroTime(now - SignedDuration::from_secs(100)));
        let renewed = next_spec(Some(&mine), Decision::Renew, "me", now).expect("spec");
        assert_eq!(renewed.acquire_time, mine.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(next_spec(Some(&old), Decision::Wait, "me", now), None);
    }
}
