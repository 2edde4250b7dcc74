//! The Kubernetes children as the controller's watches see them.
//!
//! A resync of a pipeline that is in sync must not write: a server-side apply that changes
//! nothing is still a PATCH the API server handles (and an audit log records). So each child
//! kind is watched through a reflector whose cache is kept here, and an apply is skipped when
//! the cached child already holds every field of the desired object with the same values, and
//! what the operator last applied is what it would apply now (so a field dropped from the
//! desired object is still removed by a new apply).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A kind of child the controller applies and watches.
pub trait Child:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// This kind's cache.
    fn store(stores: &Stores) -> &Store<Self>;
}

/// One cache per child kind.
#[derive(Clone)]
pub struct Stores {
    pub stateful_sets: Store<StatefulSet>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
    pub service_accounts: Store<ServiceAccount>,
    /// The workloads' pods (never applied; read for the reason a pod is failing).
    pub pods: Store<Pod>,
}

macro_rules! child {
    ($kind:ty, $field:ident) => {
        impl Child for $kind {
            fn store(stores: &Stores) -> &Store<Self> {
                &stores.$field
            }
        }
    };
}
child!(StatefulSet, stateful_sets);
child!(Deployment, deployments);
child!(Service, services);
child!(ConfigMap, config_maps);
child!(ServiceAccount, service_accounts);

/// A watch of one child kind that fills a cache; the stream goes to the controller
/// (`Controller::owns_stream`), which maps each change to the owning pipeline.
pub fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects()
        .boxed();
    (reader, stream)
}

/// The cached `name` in `namespace` if it holds every field of `desired`.
pub fn holding<K: Child>(
    store: &Store<K>,
    namespace: &str,
    name: &str,
    desired: &Value,
) -> Option<std::sync::Arc<K>> {
    let live = store.get(&ObjectRef::new(name).within(namespace))?;
    serde_json::to_value(live.as_ref())
        .is_ok_and(|value| is_subset(desired, &value))
        .then_some(live)
}

/// The cached pods in `namespace` whose labels include every one of `selector`.
pub fn pods_matching(
    stores: &Stores,
    namespace: &str,
    selector: &std::collections::BTreeMap<String, String>,
) -> Vec<std::sync::Arc<Pod>> {
    stores
        .pods
        .state()
        .into_iter()
        .filter(|pod| {
            pod.metadata.namespace.as_deref() == Some(namespace)
                && pod.metadata.labels.as_ref().is_some_and(|labels| {
                    selector
                        .iter()
                        .all(|(key, value)| labels.get(key) == Some(value))
                })
        })
        .collect()
}

/// Whether every field of `desired` is in `live` with the same value. Lists must match item by
/// item; fields the API server adds (defaults, status, metadata) are ignored; an empty object
/// or list stands for an absent one (the API server drops some of them).
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => {
            want.iter().all(|(key, value)| match have.get(key) {
                Some(found) => is_subset(value, found),
                None => is_empty(value),
            })
        }
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| is_subset(w, h))
        }
        (want, Value::Null) => is_empty(want),
        (want, have) => want == have,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(list) => list.is_empty(),
        _ => false,
    }
}

/// Whether the pipeline may apply `desired` over the `existing` object of the same name: when
/// the existing one is the pipeline's (its controller owner reference has the pipeline's uid), or
/// was left by an earlier pipeline of the same name (no controller, and the operator's labels
/// naming this pipeline). Anything else belongs to someone else: a `Conflict` that names it.
pub fn check_takeover<K: Child>(
    existing: &ObjectMeta,
    desired: &ObjectMeta,
    namespace: &str,
) -> Result<(), crate::error::Error> {
    let wanted_owner = desired
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true));
    let controller = existing
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true));
    let label = |key: &str| existing.labels.as_ref().and_then(|labels| labels.get(key));
    let ours = match (controller, wanted_owner) {
        (Some(controller), Some(wanted)) => controller.uid == wanted.uid,
        (None, Some(wanted)) => {
            label("app.kubernetes.io/managed-by").map(String::as_str)
                == Some(super::workload::MANAGER)
                && label(super::workload::PIPELINE_LABEL) == Some(&wanted.name)
        }
        _ => false,
    };
    if ours {
        return Ok(());
    }
    let name = existing.name.as_deref().unwrap_or_default();
    let held_by = match controller {
        Some(owner) => format!("is controlled by {} {}", owner.kind, owner.name),
        None => "was not made by this pipeline".to_owned(),
    };
    Err(crate::error::Error::Conflict(format!(
        "{} {namespace}/{name} already exists and {held_by}; the pipeline does not take it \
         over (delete or rename it, or rename the pipeline)",
        K::kind(&())
    )))
}

/// The key of a child in the record of what was applied.
pub fn key<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> String {
    format!("{}/{namespace}/{name}", K::kind(&()))
}

/// Whether a key of [`key`] names a child of `pipeline` in `namespace` (children are named
/// `<pipeline>-<component>`).
pub fn belongs_to(key: &str, namespace: &str, pipeline: &str) -> bool {
    let mut parts = key.splitn(3, '/');
    let (_, ns, name) = (parts.next(), parts.next(), parts.next());
    ns == Some(namespace)
        && name.is_some_and(|name| {
            name.strip_prefix(pipeline)
                .is_some_and(|rest| rest.starts_with('-'))
        })
}

/// A hash of what is applied (serde_json keeps object keys sorted, so equal objects hash alike).
pub fn hash_of(value: &Value) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

/// Whether two values serialise alike.
pub fn same_json<T: Serialize>(a: &T, b: &T) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_child_with_server_defaults_holds_the_desired_fields() {
        let desired = json!({
            "metadata": {"name": "shop-aggregator", "labels": {"a": "b"}},
            "spec": {"replicas": 1, "template": {"spec": {"volumes": [{"name": "tmp", "emptyDir": {}}]}}}
        });
        let live = json!({
            "metadata": {"name": "shop-aggregator", "labels": {"a": "b"}, "uid": "1", "resourceVersion": "7"},
            "spec": {"replicas": 1, "revisionHistoryLimit": 10,
                     "template": {"spec": {"volumes": [{"name": "tmp", "emptyDir": {}}], "dnsPolicy": "ClusterFirst"}}},
            "status": {"replicas": 1}
        });
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn a_changed_or_missing_field_is_drift() {
        let desired = json!({"spec": {"replicas": 2, "selector": {"matchLabels": {"app": "x"}}}});
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 1, "selector": {"matchLabels": {"app": "x"}}}})
        ));
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 2}})));
        // A list with an extra item (someone added a container) is drift too.
        assert!(!is_subset(
            &json!({"containers": [{"name": "a"}]}),
            &json!({"containers": [{"name": "a"}, {"name": "b"}]})
        ));
        // Empty desired values match absent ones.
        assert!(is_subset(&json!({"annotations": {}}), &json!({})));
    }

    fn meta(yaml: &str) -> ObjectMeta {
        serde_norway::from_str(yaml).expect("metadata")
    }

    #[test]
    fn only_the_pipelines_own_objects_are_taken_over() {
        let desired = meta(
            "{name: shop-aggregator, ownerReferences: [{apiVersion: clickheatmap.io/v1alpha1, \
             kind: ClickHeatmapPipeline, name: shop, uid: u1, controller: true}]}",
        );
        // Its own object, and one an earlier `shop` left behind (labels, no controller).
        assert_eq!(
            check_takeover::<ConfigMap>(&desired, &desired, "ns"),
            Ok(())
        );
        let orphan = meta(
            "{name: shop-aggregator, labels: {app.kubernetes.io/managed-by: clickheatmap-operator, \
             clickheatmap.io/pipeline: shop}}",
        );
        assert_eq!(check_takeover::<ConfigMap>(&orphan, &desired, "ns"), Ok(()));
        // Someone else's: no labels, or another controller.
        let foreign = meta("{name: shop-aggregator}");
        let error = check_takeover::<ConfigMap>(&foreign, &desired, "ns").expect_err("foreign");
        assert_eq!(
            error.to_string(),
            "ConfigMap ns/shop-aggregator already exists and was not made by this \
             pipeline; the pipeline does not take it over (delete or rename it, or rename the \
             pipeline)"
        );
        let controlled = meta(
            "{name: shop-aggregator, ownerReferences: [{apiVersion: apps/v1, kind: Deployment, \
             name: web, uid: u9, controller: true}]}",
        );
        let error = check_takeover::<ConfigMap>(&controlled, &desired, "ns").expect_err("taken");
        assert!(
            error
                .to_string()
                .contains("is controlled by Deployment web"),
            "{error}"
        );
    }

    #[test]
    fn keys_name_their_pipeline() {
        let key = key::<ConfigMap>("analytics", "shop-aggregator");
        assert_eq!(key, "ConfigMap/analytics/shop-aggregator");
        assert!(belongs_to(&key, "analytics", "shop"));
        assert!(!belongs_to(&key, "analytics", "sho"));
        assert!(!belongs_to(&key, "other", "shop"));
    }

    #[test]
    fn equal_objects_hash_alike() {
        let a = json!({"b": 1, "a": [1, 2]});
        let b: Value = serde_json::from_str(r#"{"a":[1,2],"b":1}"#).expect("json");
        assert_eq!(hash_of(&a), hash_of(&b));
        assert_ne!(hash_of(&a), hash_of(&json!({"a": [1, 2], "b": 2})));
    }
}
