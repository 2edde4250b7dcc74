//! The workload conditions (`AggregatorReady`, `CollectorReady`, `ViewerReady`) from what the
//! workloads really do: the StatefulSet's or Deployment's status (observed generation, updated
//! and ready replicas, progress deadline) and, when pods are not ready, the reason their
//! containers give (a crash loop with its last exit, an image that cannot be pulled).
//!
//! Pure functions of the objects as the watches see them; the controller calls them after each
//! apply with the live object and the component's pods.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::DesiredCondition;
use crate::error::Reason;

/// Replicas are being replaced, added or removed (the rollout goes on by itself).
pub const ROLLING_OUT: &str = "RollingOut";
/// Pods exist at the current revision but are not ready yet (starting, or failing probes).
pub const PODS_NOT_READY: &str = "PodsNotReady";
/// A container cannot run: crash loop, image pull failure, bad configuration. A person must act.
pub const POD_FAILING: &str = "PodFailing";
/// The Deployment stopped progressing (`progressDeadlineSeconds`). A person must act.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
/// The Deployment's controller cannot create pods (admission refused them: an unknown priority
/// class, a quota, a policy). A person must act.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";
/// `replicas: 0`: the aggregator is stopped on purpose; clicks wait in the stream.
pub const PAUSED: &str = "Paused";

/// Container waiting reasons that do not go away by waiting.
const FAILING_WAIT_REASONS: [&str; 8] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The rollout state of a StatefulSet or Deployment, in the terms both share.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutState {
    /// `Kind name`, for messages.
    pub what: String,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub desired: i32,
    /// Pods that exist (old and new revisions).
    pub current: i32,
    pub updated: i32,
    pub ready: i32,
    /// Deployment: the `Progressing` condition says `ProgressDeadlineExceeded`.
    pub deadline_exceeded: bool,
    /// Deployment: the `ReplicaFailure` condition's message (pods could not be created).
    pub replica_failure: Option<String>,
}

impl RolloutState {
    pub fn of_stateful_set(stateful_set: &StatefulSet) -> RolloutState {
        let status = stateful_set.status.clone().unwrap_or_default();
        let desired = stateful_set
            .spec
            .as_ref()
            .and_then(|spec| spec.replicas)
            .unwrap_or(1);
        // A StatefulSet's pods are all updated once both revisions agree.
        let rolled =
            status.current_revision.is_some() && status.current_revision == status.update_revision;
        RolloutState {
            what: format!(
                "StatefulSet {}",
                stateful_set.metadata.name.as_deref().unwrap_or_default()
            ),
            generation: stateful_set.metadata.generation,
            observed_generation: status.observed_generation,
            desired,
            current: status.replicas,
            updated: if rolled {
                status.replicas
            } else {
                status.updated_replicas.unwrap_or(0)
            },
            ready: status.ready_replicas.unwrap_or(0),
            deadline_exceeded: false,
            replica_failure: None,
        }
    }

    pub fn of_deployment(deployment: &Deployment) -> RolloutState {
        let status = deployment.status.clone().unwrap_or_default();
        let desired = deployment
            .spec
            .as_ref()
            .and_then(|spec| spec.replicas)
            .unwrap_or(1);
        let deadline_exceeded = status.conditions.iter().flatten().any(|condition| {
            condition.type_ == "Progressing"
                && condition.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED)
        });
        let replica_failure = status.conditions.iter().flatten().find_map(|condition| {
            (condition.type_ == "ReplicaFailure" && condition.status == "True").then(|| {
                condition
                    .message
                    .clone()
                    .unwrap_or_else(|| "pods cannot be created".to_owned())
            })
        });
        RolloutState {
            replica_failure,
            what: format!(
                "Deployment {}",
                deployment.metadata.name.as_deref().unwrap_or_default()
            ),
            generation: deployment.metadata.generation,
            observed_generation: status.observed_generation,
            desired,
            current: status.replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            ready: status.available_replicas.unwrap_or(0),
            deadline_exceeded,
        }
    }
}

/// Why one of `pods` cannot run, if one of its containers says so: `pod p: container c
/// CrashLoopBackOff (last exit: Error, code 1; 4 restarts)`.
pub fn failing_pod(pods: &[&Pod]) -> Option<String> {
    pods.iter().find_map(|pod| {
        let status = pod.status.as_ref()?;
        let containers = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        containers.into_iter().find_map(|container| {
            let waiting = container.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            FAILING_WAIT_REASONS.contains(&reason).then(|| {
                format!(
                    "pod {}: container {} {reason}{}",
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    container.name,
                    last_exit(container, waiting.message.as_deref()),
                )
            })
        })
    })
}

fn last_exit(container: &ContainerStatus, waiting_message: Option<&str>) -> String {
    let terminated = container
        .last_state
        .as_ref()
        .and_then(|state| state.terminated.as_ref());
    match terminated {
        Some(terminated) => format!(
            " (last exit: {}, code {}; {} restarts)",
            terminated.reason.as_deref().unwrap_or("unknown"),
            terminated.exit_code,
            container.restart_count
        ),
        None => waiting_message
            .filter(|message| !message.is_empty())
            .map(|message| format!(": {message}"))
            .unwrap_or_default(),
    }
}

/// The condition `type_` for a workload in `state` whose pods are `pods`. `paused_note` is said
/// when `replicas` is 0 and that is allowed (the aggregator); otherwise 0 replicas is just done.
pub fn condition(
    type_: &str,
    state: &RolloutState,
    pods: &[&Pod],
    paused_note: Option<&str>,
) -> DesiredCondition {
    let not_ready = |reason: &str, message: String| DesiredCondition {
        unknown: false,
        type_: type_.to_owned(),
        ready: false,
        reason: reason.to_owned(),
        message,
    };
    let what = &state.what;
    if let Some(failing) = failing_pod(pods) {
        return not_ready(POD_FAILING, format!("{what}: {failing}"));
    }
    if let Some(failure) = &state.replica_failure {
        return not_ready(REPLICA_FAILURE, format!("{what}: {failure}"));
    }
    if state.deadline_exceeded {
        return not_ready(
            PROGRESS_DEADLINE_EXCEEDED,
            format!(
                "{what}: the rollout made no progress within its deadline ({} of {} pods ready)",
                state.ready, state.desired
            ),
        );
    }
    if state.observed_generation.unwrap_or(0) < state.generation.unwrap_or(0) {
        return not_ready(
            ROLLING_OUT,
            format!(
                "{what}: waiting for its controller to observe generation {}",
                state.generation.unwrap_or(0)
            ),
        );
    }
    if state.desired == 0 {
        return match (state.current, paused_note) {
            (0, Some(note)) => DesiredCondition {
                unknown: false,
                type_: type_.to_owned(),
                ready: true,
                reason: PAUSED.to_owned(),
                message: format!("{what}: {note}"),
            },
            (0, None) => {
                DesiredCondition::new(type_, true, Reason::Ready, format!("{what}: 0 pods wanted"))
            }
            (current, _) => not_ready(
                ROLLING_OUT,
                format!("{what}: stopping, {current} pods left"),
            ),
        };
    }
    if state.updated < state.desired || state.current > state.desired {
        return not_ready(
            ROLLING_OUT,
            format!(
                "{what}: rolling out, {} of {} pods updated, {} ready ({} exist)",
                state.updated.min(state.desired),
                state.desired,
                state.ready,
                state.current
            ),
        );
    }
    if state.ready < state.desired {
        return not_ready(
            PODS_NOT_READY,
            format!("{what}: {} of {} pods ready", state.ready, state.desired),
        );
    }
    DesiredCondition::new(
        type_,
        true,
        Reason::Ready,
        format!("{what}: {} of {} pods ready", state.ready, state.desired),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stateful_set(yaml: &str) -> StatefulSet {
        serde_norway::from_str(yaml).expect("StatefulSet fixture")
    }

    fn pod(yaml: &str) -> Pod {
        serde_norway::from_str(yaml).expect("Pod fixture")
    }

    const ROLLED: &str = r"
metadata: {name: shop-aggregator, generation: 3}
spec: {replicas: 2, selector: {}, template: {}, serviceName: shop-aggregator}
status: {observedGeneration: 3, replicas: 2, readyReplicas: 2, updatedReplicas: 2,
         currentRevision: r2, updateRevision: r2}
";

    fn aggregator(state: &RolloutState, pods: &[&Pod]) -> DesiredCondition {
        condition("AggregatorReady", state, pods, Some("paused"))
    }

    #[test]
    fn a_rolled_out_stateful_set_is_ready() {
        let state = RolloutState::of_stateful_set(&stateful_set(ROLLED));
        let condition = aggregator(&state, &[]);
        assert!(condition.ready, "{condition:?}");
        assert_eq!(condition.reason, "Ready");
        assert_eq!(
            condition.message,
            "StatefulSet shop-aggregator: 2 of 2 pods ready"
        );
    }

    #[test]
    fn an_unobserved_generation_is_rolling_out() {
        let mut sts = stateful_set(ROLLED);
        sts.metadata.generation = Some(4);
        let condition = aggregator(&RolloutState::of_stateful_set(&sts), &[]);
        assert!(!condition.ready);
        assert_eq!(condition.reason, ROLLING_OUT);
        assert!(
            condition.message.contains("generation 4"),
            "{}",
            condition.message
        );
    }

    #[test]
    fn a_revision_change_in_progress_is_rolling_out() {
        let sts = stateful_set(
            r"
metadata: {name: shop-aggregator, generation: 4}
spec: {replicas: 2, selector: {}, template: {}, serviceName: shop-aggregator}
status: {observedGeneration: 4, replicas: 2, readyReplicas: 2, updatedReplicas: 1,
         currentRevision: r2, updateRevision: r3}
",
        );
        let condition = aggregator(&RolloutState::of_stateful_set(&sts), &[]);
        assert_eq!(condition.reason, ROLLING_OUT);
        assert!(
            condition.message.contains("1 of 2 pods updated"),
            "{}",
            condition.message
        );
    }

    #[test]
    fn pods_not_ready_yet() {
        let mut sts = stateful_set(ROLLED);
        if let Some(status) = sts.status.as_mut() {
            status.ready_replicas = Some(1);
        }
        let condition = aggregator(&RolloutState::of_stateful_set(&sts), &[]);
        assert_eq!(condition.reason, PODS_NOT_READY);
        assert!(condition.message.ends_with("1 of 2 pods ready"));
    }

    #[test]
    fn a_crash_loop_names_the_pod_the_container_and_the_last_exit() {
        let crashing = pod(r"
metadata: {name: shop-aggregator-1}
status:
  containerStatuses:
  - name: aggregator
    image: img
    imageID: ''
    ready: false
    restartCount: 4
    state: {waiting: {reason: CrashLoopBackOff, message: back-off 40s}}
    lastState: {terminated: {reason: Error, exitCode: 1}}
");
        let mut sts = stateful_set(ROLLED);
        if let Some(status) = sts.status.as_mut() {
            status.ready_replicas = Some(1);
        }
        let condition = aggregator(&RolloutState::of_stateful_set(&sts), &[&crashing]);
        assert!(!condition.ready);
        assert_eq!(condition.reason, POD_FAILING);
        assert_eq!(
            condition.message,
            "StatefulSet shop-aggregator: pod shop-aggregator-1: container aggregator \
             CrashLoopBackOff (last exit: Error, code 1; 4 restarts)"
        );
    }

    #[test]
    fn an_image_that_cannot_be_pulled_is_failing() {
        let pulling = pod(r"
metadata: {name: shop-viewer-abc}
status:
  containerStatuses:
  - name: viewer
    image: img
    imageID: ''
    ready: false
    restartCount: 0
    state: {waiting: {reason: ContainerCreating}}
  - name: other
    image: img
    imageID: ''
    ready: false
    restartCount: 0
    state: {waiting: {reason: ImagePullBackOff, message: 'Back-off pulling image x'}}
");
        let message = failing_pod(&[&pulling]).expect("failing");
        assert_eq!(
            message,
            "pod shop-viewer-abc: container other ImagePullBackOff: Back-off pulling image x"
        );
        // Starting containers are not failures.
        let starting = pod(r"
metadata: {name: p}
status:
  containerStatuses:
  - {name: c, image: i, imageID: '', ready: false, restartCount: 0,
     state: {waiting: {reason: ContainerCreating}}}
");
        assert_eq!(failing_pod(&[&starting]), None);
    }

    #[test]
    fn zero_replicas_pause_the_aggregator_once_its_pods_are_gone() {
        let mut sts = stateful_set(ROLLED);
        if let Some(spec) = sts.spec.as_mut() {
            spec.replicas = Some(0);
        }
        let stopping = aggregator(&RolloutState::of_stateful_set(&sts), &[]);
        assert_eq!(stopping.reason, ROLLING_OUT);
        assert!(stopping.message.contains("stopping, 2 pods left"));
        if let Some(status) = sts.status.as_mut() {
            status.replicas = 0;
            status.ready_replicas = None;
        }
        let paused = aggregator(&RolloutState::of_stateful_set(&sts), &[]);
        assert!(paused.ready);
        assert_eq!(paused.reason, PAUSED);
    }

    #[test]
    fn a_deployment_past_its_deadline_needs_a_person() {
        let deployment: Deployment = serde_norway::from_str(
            r"
metadata: {name: shop-collector, generation: 2}
spec: {replicas: 2, selector: {}, template: {}}
status:
  observedGeneration: 2
  replicas: 3
  updatedReplicas: 1
  availableReplicas: 2
  conditions:
  - {type: Progressing, status: 'False', reason: ProgressDeadlineExceeded}
",
        )
        .expect("Deployment fixture");
        let state = RolloutState::of_deployment(&deployment);
        let stuck = condition("CollectorReady", &state, &[], None);
        assert_eq!(stuck.reason, PROGRESS_DEADLINE_EXCEEDED);
        assert!(!stuck.ready);
        let mut refused = deployment.clone();
        if let Some(status) = refused.status.as_mut() {
            status.conditions = Some(vec![serde_norway::from_str(
                "{type: ReplicaFailure, status: 'True', reason: FailedCreate, message: 'pods \"x\" is forbidden: no PriorityClass with name analytics was found'}",
            )
            .expect("condition")]);
        }
        let failed = condition(
            "CollectorReady",
            &RolloutState::of_deployment(&refused),
            &[],
            None,
        );
        assert_eq!(failed.reason, REPLICA_FAILURE);
        assert!(
            failed
                .message
                .ends_with("no PriorityClass with name analytics was found")
        );
        let mut fine = deployment.clone();
        if let Some(status) = fine.status.as_mut() {
            status.conditions = None;
            status.replicas = Some(2);
            status.updated_replicas = Some(2);
        }
        let done = condition(
            "CollectorReady",
            &RolloutState::of_deployment(&fine),
            &[],
            None,
        );
        assert!(done.ready, "{done:?}");
        assert_eq!(done.message, "Deployment shop-collector: 2 of 2 pods ready");
    }
}
