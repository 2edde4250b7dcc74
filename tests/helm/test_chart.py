"""Lint, render and check the clickheatmap-operator chart with the real Helm v4 library."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from conftest import CHART_DIR, NAMESPACE, RELEASE, VALUES_FULL

# ---------------------------------------------------------------------------------------------
# The operator's Kubernetes API calls (its contract). RBAC must allow exactly these.

RECONCILE_RULES = {
    ("clickheatmap.io", "clickheatmappipelines"): {"get", "list", "watch", "patch", "update"},
    ("clickheatmap.io", "clickheatmappipelines/status"): {"get", "patch", "update"},
    ("clickheatmap.io", "clickheatmappipelines/finalizers"): {"update"},
    # Backfills: read the requests, write their status, own their Jobs (no update: a Job's
    # template is immutable; the operator creates it once and deletes it when done).
    ("clickheatmap.io", "clickheatmapbackfills"): {"get", "list", "watch"},
    ("clickheatmap.io", "clickheatmapbackfills/status"): {"get", "patch", "update"},
    ("clickheatmap.io", "clickheatmapbackfills/finalizers"): {"update"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "serviceaccounts"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    # Read only: the workloads' pods, for the reason a pod is failing (CrashLoopBackOff...).
    ("", "pods"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}

LEASE_NAME = "clickheatmap-operator"
# (group, resource, resourceName or None) -> verbs
LEADER_ELECTION_RULES = {
    ("coordination.k8s.io", "leases", None): {"create", "list", "watch"},
    ("coordination.k8s.io", "leases", LEASE_NAME): {"get", "update", "patch"},
}

SECURE_CONTAINER_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

NAMESPACED_KINDS = {
    "Deployment", "ServiceAccount", "Service", "Role", "RoleBinding", "PodDisruptionBudget",
    "ServiceMonitor", "PrometheusRule", "ConfigMap",
}


def flatten_rules(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    flat: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "resourceNames" not in rule, rule
        assert "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                flat.setdefault((group, resource), set()).update(rule["verbs"])
    return flat


def assert_no_wildcards(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            for item in rule.get(field, []):
                assert "*" not in item, f"wildcard in {field}: {rule}"


def deployment_container(rendered) -> dict[str, Any]:
    containers = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def args_of(rendered) -> list[str]:
    return deployment_container(rendered)["args"]


def with_values(**overrides: Any) -> dict[str, Any]:
    """Nested values from dotted keys: with_values(**{"operator.logFormat": "text"})."""
    values: dict[str, Any] = {}
    for dotted, value in overrides.items():
        node = values
        *parents, leaf = dotted.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return values


# ---------------------------------------------------------------------------------------------
# Chart metadata, lint and plain renders


def test_chart_metadata(chart):
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["type"] == "application"
    assert meta["appVersion"] == "0.1.0"
    assert meta["name"] == "clickheatmap-operator"


def lint_findings(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    assert report["total_charts_linted"] == 1
    # Severity 1 is informational ("icon is recommended"); warnings and errors fail.
    return [m for m in report["messages"] if m["severity"] >= 2] + [
        {"error": e} for e in report["errors"]
    ]


def test_lint_default_values():
    assert lint_findings(None) == []


def test_lint_full_values(full_values):
    assert lint_findings(full_values) == []


def test_render_default_values(render):
    rendered = render()
    assert rendered.kinds() == sorted(
        ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    )
    for obj in rendered.objects:
        if obj["kind"] in NAMESPACED_KINDS:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "clickheatmap-operator"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "clickheatmap-operator-0.1.0"
    assert "crds.keep: true" in rendered.notes


def test_render_full_values(render, full_values):
    rendered = render(full_values)
    assert rendered.kinds() == sorted(
        [
            "ConfigMap", "Deployment", "PodDisruptionBudget", "PrometheusRule", "Role", "Role",
            "Role", "RoleBinding", "RoleBinding", "RoleBinding", "Service", "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    deployment = rendered.one("Deployment")
    assert deployment["metadata"]["name"] == "clickheatmap"
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "analytics"
    assert pod["metadata"]["annotations"]["example.com/owner"] == "analytics"
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "clickheatmap-operator"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert "podAntiAffinity" in spec["affinity"]
    assert spec["priorityClassName"] == "platform-critical"
    container = spec["containers"][0]
    assert container["image"] == full_values["image"]["repository"] + "@" + full_values["image"]["digest"]
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"]["limits"]["memory"] == "512Mi"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9443, "protocol": "TCP"}]
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_REGION"]["value"] == "ap-northeast-2"
    assert env["RUST_LOG"]["value"] == "info,clickheatmap_operator=debug"
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]["key"] == "url"
    assert container["args"] == [
        "run",
        "--metrics-port", "9443",
        "--log-format", "text",
        "--aggregator-image", "registry.example.com/clickheatmap/aggregator:0.1.0",
        "--watch-namespaces", "analytics,shop",
        "--leader-election",
        "--max-concurrent-reconciles", "4",
        "--resync-seconds", "120",
        "--aws-drift-check-seconds", "900",
        "--aws-rate-limit", "glue=2.5,kinesis=10",
        "--aws-endpoint-url", "http://localstack.localstack.svc:4566",
        "--aws-credentials-secret", "localstack-credentials",
    ]
    sa = rendered.one("ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/clickheatmap-operator")
    assert sa["metadata"]["labels"]["team"] == "analytics"
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2 and "maxUnavailable" not in pdb["spec"]
    service = rendered.one("Service")
    assert service["spec"]["ports"][0]["port"] == 9443
    assert service["metadata"]["annotations"] == {"example.com/scrape": "true"}
    monitor = rendered.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"


# ---------------------------------------------------------------------------------------------
# values.schema.json


def test_schema_is_valid_draft7_and_accepts_the_defaults():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(defaults)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load(VALUES_FULL.read_text()))


def test_schema_closes_every_object_it_defines():
    """additionalProperties: false wherever the schema lists properties."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    open_objects = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(path or "/")
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}/{i}")

    walk(schema, "")
    assert open_objects == []
    # ...and every key of values.yaml is described by the schema.
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

    def covered(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        for key, value in values.items():
            assert key in node["properties"], f"{path}.{key} is not in values.schema.json"
            child = node["properties"][key]
            if isinstance(value, dict) and "properties" in child:
                covered(value, child, f"{path}.{key}")

    covered(defaults, schema, "")


BAD_VALUES = {
    "unknown top-level key": {"replicas": 2},
    "unknown nested key": {"operator": {"watchNamespace": ["analytics"]}},
    "unknown deeply nested key": {"metrics": {"serviceMonitor": {"enable": True}}},
    "unknown key in image": {"image": {"registry": "ghcr.io"}},
    "wrong type: replicaCount string": {"replicaCount": "two"},
    "wrong type: watchNamespaces string": {"operator": {"watchNamespaces": "analytics"}},
    "wrong type: annotations list": {"serviceAccount": {"annotations": ["a"]}},
    "wrong type: rbac.create string": {"rbac": {"create": "yes"}},
    "bad enum: logFormat": {"operator": {"logFormat": "yaml"}},
    "bad enum: pullPolicy": {"image": {"pullPolicy": "Sometimes"}},
    "bad enum: toleration operator": {"tolerations": [{"key": "a", "operator": "In"}]},
    "crds.keep false is not supported": {"crds": {"keep": False}},
    "bad namespace name": {"operator": {"watchNamespaces": ["Analytics_NS"]}},
    "duplicate namespaces": {"operator": {"watchNamespaces": ["a", "a"]}},
    "port out of range": {"operator": {"metricsPort": 70000}},
    "bad digest": {"image": {"digest": "latest"}},
    "bad region": {"operator": {"awsRegion": "Seoul"}},
    "bad PDB percentage": {"podDisruptionBudget": {"minAvailable": "half"}},
    "unknown key in extraEnv item": {"operator": {"extraEnv": [{"name": "A", "val": "b"}]}},
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values_at_render(chart, values):
    with pytest.raises(helm.HelmValuesError, match="values don't meet the specifications"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values_at_lint(values):
    report = helm.lint(CHART_DIR, values, namespace=NAMESPACE)
    errors = [m for m in report["messages"] if m["severity"] == 3]
    assert errors, f"lint accepted {values}"


def test_existing_service_account_needs_a_name(chart):
    with pytest.raises(helm.HelmRenderError, match="serviceAccount.name must name an existing"):
        chart.render({"serviceAccount": {"create": False}}, name=RELEASE, namespace=NAMESPACE)


def test_service_monitor_needs_the_service(chart):
    values = {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}
    with pytest.raises(helm.HelmRenderError, match="needs metrics.service.enabled"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


# ---------------------------------------------------------------------------------------------
# Pod security


@pytest.mark.parametrize("which", ["default", "full"])
def test_secure_pod_defaults(render, full_values, which):
    rendered = render(None if which == "default" else full_values)
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
    for container in pod["containers"] + pod.get("initContainers", []):
        assert container["securityContext"] == SECURE_CONTAINER_CONTEXT, container["name"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["command"] == ["/usr/local/bin/clickheatmap-operator"]
        # The root filesystem is read-only; only an emptyDir /tmp is writable.
        assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]


def test_probes_and_downward_api(render):
    container = deployment_container(render())
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "AWS_REGION" not in env
    assert container["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}


def test_aggregator_image_defaults_to_the_operator_image(render):
    rendered = render({"image": {"tag": "1.2.3"}})
    container = deployment_container(rendered)
    assert container["image"] == "ghcr.io/clickheatmap/clickheatmap:1.2.3"
    args = container["args"]
    assert args[args.index("--aggregator-image") + 1] == container["image"]
    assert args[args.index("--log-format") + 1] == "json"
    assert args[args.index("--metrics-port") + 1] == "8080"


def test_existing_service_account(render):
    rendered = render({"serviceAccount": {"create": False, "name": "preexisting"}})
    assert rendered.of_kind("ServiceAccount") == []
    assert rendered.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "preexisting"
    assert rendered.one("ClusterRoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "preexisting", "namespace": NAMESPACE}
    ]


# ---------------------------------------------------------------------------------------------
# RBAC


def test_cluster_wide_rbac_when_no_watch_namespaces(render):
    rendered = render()
    assert rendered.of_kind("Role") == [] and rendered.of_kind("RoleBinding") == []
    role = rendered.one("ClusterRole")
    assert_no_wildcards(role["rules"])
    assert flatten_rules(role["rules"]) == RECONCILE_RULES
    binding = rendered.one("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "clickheatmap-operator", "namespace": NAMESPACE}
    ]
    assert "--watch-namespaces" not in args_of(rendered)


def test_role_per_watched_namespace(render):
    rendered = render({"operator": {"watchNamespaces": ["analytics", "shop"]}})
    assert rendered.of_kind("ClusterRole") == [] and rendered.of_kind("ClusterRoleBinding") == []
    roles = {r["metadata"]["namespace"]: r for r in rendered.of_kind("Role")}
    bindings = {b["metadata"]["namespace"]: b for b in rendered.of_kind("RoleBinding")}
    assert set(roles) == {"analytics", "shop"} and set(bindings) == {"analytics", "shop"}
    for namespace, role in roles.items():
        assert_no_wildcards(role["rules"])
        assert flatten_rules(role["rules"]) == RECONCILE_RULES
        binding = bindings[namespace]
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "clickheatmap-operator", "namespace": NAMESPACE}
        ]
    args = args_of(rendered)
    assert args[args.index("--watch-namespaces") + 1] == "analytics,shop"


def test_no_rbac_when_disabled(render):
    rendered = render({"rbac": {"create": False}, "replicaCount": 2})
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert rendered.of_kind(kind) == []


def test_no_object_grants_rbac_or_wildcards(render, full_values):
    """The operator creates no RBAC objects, so no rule may touch rbac.authorization.k8s.io."""
    for values in (None, full_values, {"replicaCount": 2}):
        for obj in render(values).objects:
            for rule in obj.get("rules", []):
                assert_no_wildcards([rule])
                assert "rbac.authorization.k8s.io" not in rule["apiGroups"]
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


# ---------------------------------------------------------------------------------------------
# Leader election, PDB, strategy


def leader_election_roles(rendered) -> list[dict[str, Any]]:
    return [r for r in rendered.of_kind("Role") if r["metadata"]["name"].endswith("-leader-election")]


@pytest.mark.parametrize(
    "values, expected",
    [
        ({}, False),
        ({"replicaCount": 1}, False),
        ({"replicaCount": 2}, True),
        ({"replicaCount": 5}, True),
        ({"replicaCount": 1, "operator": {"leaderElection": {"enabled": True}}}, True),
    ],
)
def test_leader_election(render, values, expected):
    rendered = render(values)
    assert ("--leader-election" in args_of(rendered)) is expected
    strategy = rendered.one("Deployment")["spec"]["strategy"]["type"]
    # Without leader election, Recreate keeps two operators from ever running at once.
    assert strategy == ("RollingUpdate" if expected else "Recreate")
    roles = leader_election_roles(rendered)
    if not expected:
        assert roles == []
        return
    assert len(roles) == 1
    role = roles[0]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert_no_wildcards(role["rules"])
    flat: dict[tuple, set[str]] = {}
    for rule in role["rules"]:
        names = rule.get("resourceNames") or [None]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in names:
                    flat.setdefault((group, resource, name), set()).update(rule["verbs"])
    assert flat == LEADER_ELECTION_RULES
    binding = [b for b in rendered.of_kind("RoleBinding") if b["metadata"]["name"] == role["metadata"]["name"]]
    assert len(binding) == 1 and binding[0]["metadata"]["namespace"] == NAMESPACE
    assert binding[0]["subjects"][0]["namespace"] == NAMESPACE


def test_leader_election_role_stays_in_release_namespace_with_watch_namespaces(render):
    rendered = render({"replicaCount": 2, "operator": {"watchNamespaces": ["analytics"]}})
    namespaces = sorted(r["metadata"]["namespace"] for r in rendered.of_kind("Role"))
    assert namespaces == sorted(["analytics", NAMESPACE])
    assert len(leader_election_roles(rendered)) == 1


@pytest.mark.parametrize(
    "values, expected_spec",
    [
        ({}, None),
        ({"replicaCount": 2}, {"maxUnavailable": 1}),
        ({"podDisruptionBudget": {"enabled": True}}, {"maxUnavailable": 1}),
        ({"replicaCount": 3, "podDisruptionBudget": {"minAvailable": "50%"}}, {"minAvailable": "50%"}),
        ({"replicaCount": 3, "podDisruptionBudget": {"maxUnavailable": 0}}, {"maxUnavailable": 0}),
    ],
)
def test_pod_disruption_budget(render, values, expected_spec):
    pdbs = render(values).of_kind("PodDisruptionBudget")
    if expected_spec is None:
        assert pdbs == []
        return
    assert len(pdbs) == 1
    spec = dict(pdbs[0]["spec"])
    selector = spec.pop("selector")
    assert selector == {"matchLabels": {
        "app.kubernetes.io/name": "clickheatmap-operator", "app.kubernetes.io/instance": RELEASE,
    }}
    assert spec == expected_spec


# ---------------------------------------------------------------------------------------------
# Metrics


def test_service_monitor_only_when_enabled(render):
    assert render().of_kind("ServiceMonitor") == []
    rendered = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "scheme": "http", "honorLabels": True,
         "interval": "30s", "scrapeTimeout": "10s"}
    ]
    service = rendered.one("Service")
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


# The per-pipeline series the operator exports (operator/src/controller/metrics.rs is the
# source of truth; the e2e suite also checks them against a running operator's /metrics).
METRICS_SOURCE = CHART_DIR.parent.parent / "operator" / "src" / "controller" / "metrics.rs"


def exported_metric_names() -> set[str]:
    return set(re.findall(r'"(clickheatmap_[a-z_]+)"', METRICS_SOURCE.read_text())) | set(
        re.findall(r"\b(clickheatmap_operator_[a-z_]+)", METRICS_SOURCE.read_text())
    )


def referenced_metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b(clickheatmap_[a-z_]+)", text))


def test_prometheus_rule_only_when_enabled_and_on_exported_metrics(render):
    assert render().of_kind("PrometheusRule") == []
    rendered = render({"metrics": {"prometheusRule": {"enabled": True, "lagSeconds": 90}}})
    rule = rendered.one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "ClickHeatmapPipelineStalled", "ClickHeatmapPipelineStale",
        "ClickHeatmapPipelineHighRejection", "ClickHeatmapPipelineConsumerLag",
        "ClickHeatmapPipelineNotReporting",
    }
    assert alerts["ClickHeatmapPipelineConsumerLag"]["expr"].endswith("> 90")
    assert alerts["ClickHeatmapPipelineStalled"]["for"] == "5m"
    # Prometheus templates reach Prometheus unexpanded by Helm.
    assert "{{ $labels.namespace }}" in alerts["ClickHeatmapPipelineStalled"]["annotations"]["summary"]
    names = referenced_metric_names(json.dumps(rule["spec"]))
    assert names, "the alerts use the operator's metrics"
    assert names <= exported_metric_names(), names - exported_metric_names()
    for alert in alerts.values():
        assert alert["labels"]["severity"] in {"critical", "warning"}
    with pytest.raises(Exception, match="needs metrics.service.enabled"):
        render({"metrics": {"service": {"enabled": False}, "prometheusRule": {"enabled": True}}})


def test_grafana_dashboard_is_a_sidecar_configmap_on_exported_metrics(render):
    assert [c for c in render().of_kind("ConfigMap")] == []
    rendered = render({"metrics": {"grafanaDashboard": {"enabled": True}}})
    config_map = rendered.one("ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    dashboard = json.loads(config_map["data"]["clickheatmap-pipelines.json"])
    assert dashboard["uid"] == "clickheatmap-pipelines"
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = referenced_metric_names(" ".join(expressions))
    assert names <= exported_metric_names(), names - exported_metric_names()
    # Every per-pipeline series is on the dashboard.
    pipeline_series = {n for n in exported_metric_names() if n.startswith("clickheatmap_pipeline_")}
    assert pipeline_series and pipeline_series <= names, pipeline_series - names
    moved = render({"metrics": {"grafanaDashboard": {"enabled": True, "namespace": "monitoring"}}})
    assert moved.one("ConfigMap")["metadata"]["namespace"] == "monitoring"


def test_metrics_service_selects_the_operator_pods(render):
    rendered = render()
    service = rendered.one("Service")
    pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    assert render({"metrics": {"service": {"enabled": False}}}).of_kind("Service") == []


# ---------------------------------------------------------------------------------------------
# Names


def test_long_release_names_are_truncated(render):
    name = "a-very-long-release-name-that-goes-on-and-on-and-on-x"
    assert len(name) == 53  # Helm's longest release name
    rendered = render({"replicaCount": 2, "metrics": {"serviceMonitor": {"enabled": True}}}, name=name)
    assert len(rendered.objects) >= 8
    for obj in rendered.objects:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
        assert not obj["metadata"]["name"].endswith("-"), obj["metadata"]["name"]


def test_release_name_containing_chart_name_is_not_repeated(render):
    rendered = render(name="clickheatmap-operator-prod")
    assert rendered.one("Deployment")["metadata"]["name"] == "clickheatmap-operator-prod"
    assert rendered.one("Service")["metadata"]["name"] == "clickheatmap-operator-prod-metrics"



def test_chart_declares_the_kubernetes_floor(chart):
    # The API types are built for Kubernetes 1.33 (k8s-openapi feature v1_33); `helm install` and
    # Argo CD refuse older clusters. (Offline lint does not check kubeVersion, so only the
    # declaration is tested here.)
    assert chart.metadata["kubeVersion"] == ">=1.33.0-0"


def test_the_container_runs_the_controller_subcommand(render):
    """The image's entrypoint is the operator binary, whose controller is `run`."""
    assert args_of(render({}))[0] == "run"


def test_host_network_is_off_unless_asked(render):
    pod = render({}).one("Deployment")["spec"]["template"]["spec"]
    assert "hostNetwork" not in pod
    pod = render({"hostNetwork": True}).one("Deployment")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
