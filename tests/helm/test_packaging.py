"""Static checks of the container image recipe and of the Argo CD and IAM files.

CI has no Docker engine, so the Dockerfile is never built here; these tests keep it in step with
the workspace (toolchain, binaries, user) instead.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from conftest import CHART_DIR, NAMESPACE, ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CARGO = tomllib.loads((ROOT / "Cargo.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def test_chart_app_version_is_the_workspace_version(chart):
    assert chart.metadata["appVersion"] == CARGO["workspace"]["package"]["version"]


def test_builder_stage():
    builder = stages()[0]
    rust_version = CARGO["workspace"]["package"]["rust-version"]
    assert builder[0] == ("FROM", f"rust:{rust_version}-bookworm AS builder")
    runs = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    build = " ".join(runs.replace("\\", " ").split())
    assert "cargo build --profile dist --locked -p clickheatmap-operator -p clickheatmap-aggregator -p clickheatmap-collector -p clickheatmap-viewer" in build
    # The shipped profile carries no debug info or symbols.
    dist = CARGO["profile"]["dist"]
    assert dist["inherits"] == "release" and dist["strip"] == "symbols" and dist["debug"] is False
    # The whole context goes in (every workspace member must be there for Cargo to resolve the
    # workspace); .dockerignore decides what the context holds.
    assert ("COPY", ". .") in builder


def test_runtime_stage_is_distroless_nonroot_with_every_binary():
    assert len(stages()) == 2
    runtime = stages()[-1]
    assert runtime[0] == ("FROM", "gcr.io/distroless/cc-debian12:nonroot")
    # No shell in the image, so no RUN (and no shell-form CMD/ENTRYPOINT) in the final stage.
    assert not [rest for keyword, rest in runtime if keyword == "RUN"]
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    for binary in ("clickheatmap-operator", "clickheatmap-aggregator", "clickheatmap-collector", "clickheatmap-viewer"):
        assert any(c.startswith("--from=builder") and c.endswith(f"/usr/local/bin/{binary}") for c in copies), binary
    assert ("USER", "65532:65532") in runtime
    entrypoint = [rest for keyword, rest in runtime if keyword == "ENTRYPOINT"]
    assert entrypoint == ['["/usr/local/bin/clickheatmap-operator"]']


def test_chart_runs_the_image_as_its_user(render):
    pod = render().one("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["/usr/local/bin/clickheatmap-operator"]
    assert container["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["runAsGroup"] == 65532


def dockerignore_patterns() -> list[str]:
    return [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def ignored(path: str) -> bool:
    for pattern in dockerignore_patterns():
        bare = pattern.rstrip("/")
        if fnmatch.fnmatch(path, bare) or fnmatch.fnmatch(path, bare + "/*"):
            return True
        if bare.startswith("**/") and (fnmatch.fnmatch(path, bare[3:]) or fnmatch.fnmatch(path, bare[3:] + "/*") or fnmatch.fnmatch(path, "*/" + bare[3:] + "/*")):
            return True
    return False


def test_dockerignore_keeps_the_context_small_but_complete():
    for path in ("target", "target/release/clickheatmap-aggregator", ".git", ".git/HEAD",
                 "heatmap-demo", "heatmap-demo/input/clicks.ndjson", ".venv", "node_modules",
                 "aggregator/target/x"):
        assert ignored(path), f"{path} would be sent to the Docker build"
    needed = ["Cargo.toml", "Cargo.lock"]
    for member in CARGO["workspace"]["members"]:
        needed += [f"{member}/Cargo.toml", f"{member}/src/main.rs", f"{member}/src/lib.rs"]
    for path in needed:
        assert not ignored(path), f"{path} is needed by the build but ignored"


# ---------------------------------------------------------------------------------------------
# Argo CD examples

ARGOCD = ROOT / "examples" / "argocd"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def argocd_objects() -> dict[str, dict[str, Any]]:
    objects = {}
    for path in sorted(ARGOCD.glob("*.yaml")):
        for doc in load_all(path):
            objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def test_argocd_operator_application():
    app = argocd_objects()["Application/clickheatmap-operator"]
    assert app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"
    assert app["spec"]["source"]["path"] == "charts/clickheatmap-operator"
    assert (ROOT / app["spec"]["source"]["path"] / "Chart.yaml").is_file()
    options = app["spec"]["syncPolicy"]["syncOptions"]
    assert "ServerSideApply=true" in options and "CreateNamespace=true" in options
    assert "resources-finalizer.argocd.argoproj.io" not in app["metadata"].get("finalizers", [])


def test_argocd_operator_application_values_pass_the_chart_schema():
    app = argocd_objects()["Application/clickheatmap-operator"]
    values = app["spec"]["source"]["helm"]["valuesObject"]
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name=app["spec"]["source"]["helm"]["releaseName"],
                                 namespace=app["spec"]["destination"]["namespace"])
    assert any("--leader-election" in text for text in manifests.values())


def test_argocd_pipelines_application_syncs_after_the_operator():
    objects = argocd_objects()
    app = objects["Application/clickheatmap-pipelines"]
    operator = objects["Application/clickheatmap-operator"]
    wave = lambda o: int(o["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
    assert wave(app) == 1 and wave(operator) < wave(app)
    assert wave(objects["AppProject/clickheatmap"]) < wave(operator)
    source = app["spec"]["source"]
    assert source["path"] == "examples"
    included = fnmatch.filter([p.name for p in (ROOT / "examples").glob("*.yaml")], source["directory"]["include"])
    assert included and all(p.startswith("pipeline-") for p in included)
    for name in included:
        for doc in load_all(ROOT / "examples" / name):
            assert doc["apiVersion"] == "clickheatmap.io/v1alpha1"
            assert doc["kind"] == "ClickHeatmapPipeline"
    options = app["spec"]["syncPolicy"]["syncOptions"]
    assert "ServerSideApply=true" in options and "CreateNamespace=true" in options


def test_argocd_root_application_includes_the_children():
    root = argocd_objects()["Application/clickheatmap"]
    include = root["spec"]["source"]["directory"]["include"]
    names = include.strip("{}").split(",")
    assert sorted(names) == ["operator-app.yaml", "pipelines-app.yaml", "project.yaml"]
    for name in names:
        assert (ARGOCD / name).is_file()


def test_argocd_project_allows_what_the_chart_renders(render, full_values):
    project = argocd_objects()["AppProject/clickheatmap"]["spec"]
    cluster = {(k["group"], k["kind"]) for k in project["clusterResourceWhitelist"]}
    namespaced = {(k["group"], k["kind"]) for k in project["namespaceResourceWhitelist"]}
    assert ("apiextensions.k8s.io", "CustomResourceDefinition") in cluster
    assert ("clickheatmap.io", "ClickHeatmapPipeline") in namespaced
    for values in (None, full_values):
        for obj in render(values).objects:
            group = obj["apiVersion"].rpartition("/")[0]
            assert (group, obj["kind"]) in cluster | namespaced, obj["kind"]


def test_argocd_cm_registers_the_health_check():
    cm = load_all(ARGOCD / "argocd-cm-health.yaml")[0]
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    script = cm["data"]["resource.customizations.health.clickheatmap.io_ClickHeatmapPipeline"]
    assert script == (ROOT / "deploy" / "argocd" / "health.lua").read_text()
    assert "resource.customizations.health.argoproj.io_Application" in cm["data"]


# ---------------------------------------------------------------------------------------------
# IAM policy documents

IAM = ROOT / "docs" / "iam"
PLACEHOLDER = re.compile(r"<[A-Z_]+>")


def iam_documents() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(IAM.glob("*.json"))}


def actions_of(document: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for statement in document["Statement"]:
        action = statement["Action"]
        found.update([action] if isinstance(action, str) else action)
    return found


def test_iam_documents_are_well_formed():
    documents = iam_documents()
    assert set(documents) == {
        "operator-policy.json", "operator-trust-irsa.json", "operator-trust-pod-identity.json",
        "aggregator-policy.json", "aggregator-trust-irsa.json", "aggregator-trust-pod-identity.json",
        "collector-policy.json", "collector-trust-irsa.json", "collector-trust-pod-identity.json",
        "viewer-policy.json", "viewer-trust-irsa.json", "viewer-trust-pod-identity.json",
        "firehose-role-policy.json", "firehose-role-trust.json",
        "glue-crawler-role-policy.json", "glue-crawler-role-trust.json",
        "managed-flink-role-policy.json", "managed-flink-role-trust.json",
    }
    readme = (IAM / "README.md").read_text()
    for name, document in documents.items():
        assert name in readme, f"docs/iam/README.md does not explain {name}"
        assert document["Version"] == "2012-10-17", name
        sids = [s["Sid"] for s in document["Statement"]]
        assert len(sids) == len(set(sids)), name
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow"
            for action in actions_of({"Statement": [statement]}):
                assert "*" not in action, f"{name}: wildcard action {action}"
            resources = statement.get("Resource", [])
            for resource in [resources] if isinstance(resources, str) else resources:
                assert resource != "*", f"{name}: statement {statement['Sid']} on every resource"
        assert PLACEHOLDER.search(json.dumps(document)), f"{name} has no placeholders"
        assert "123456789012" not in json.dumps(document)


def test_operator_policy_is_the_contract():
    assert actions_of(iam_documents()["operator-policy.json"]) == {
        "s3:CreateBucket", "s3:DeleteBucket", "s3:ListBucket", "s3:GetBucketLocation",
        "s3:GetBucketTagging", "s3:PutBucketTagging", "s3:GetBucketPublicAccessBlock",
        "s3:PutBucketPublicAccessBlock", "s3:GetEncryptionConfiguration",
        "s3:PutEncryptionConfiguration", "s3:GetLifecycleConfiguration",
        "s3:PutLifecycleConfiguration", "s3:DeleteObject",
        # status.dataPlane: the aggregator's progress reports (ListBucket above lists them).
        "s3:GetObject",
        "kinesis:CreateStream", "kinesis:DescribeStream", "kinesis:DescribeStreamSummary",
        "kinesis:UpdateShardCount", "kinesis:UpdateStreamMode",
        "kinesis:IncreaseStreamRetentionPeriod", "kinesis:DecreaseStreamRetentionPeriod",
        "kinesis:StartStreamEncryption",
        "kinesis:AddTagsToStream", "kinesis:ListTagsForStream", "kinesis:DeleteStream",
        "kinesis:RegisterStreamConsumer", "kinesis:DescribeStreamConsumer",
        "kinesis:DeregisterStreamConsumer",
        "firehose:CreateDeliveryStream", "firehose:DescribeDeliveryStream",
        "firehose:UpdateDestination", "firehose:DeleteDeliveryStream",
        "firehose:TagDeliveryStream", "firehose:ListTagsForDeliveryStream",
        "glue:CreateDatabase", "glue:GetDatabase", "glue:UpdateDatabase", "glue:DeleteDatabase",
        "glue:CreateTable", "glue:GetTable", "glue:UpdateTable", "glue:DeleteTable",
        "glue:CreateCrawler", "glue:GetCrawler", "glue:UpdateCrawler", "glue:DeleteCrawler",
        "glue:StartCrawler", "glue:TagResource", "glue:GetTags",
        "athena:CreateWorkGroup", "athena:GetWorkGroup", "athena:UpdateWorkGroup",
        "athena:DeleteWorkGroup", "athena:TagResource", "athena:ListTagsForResource",
        "kinesisanalytics:CreateApplication", "kinesisanalytics:DescribeApplication",
        "kinesisanalytics:UpdateApplication", "kinesisanalytics:StartApplication",
        "kinesisanalytics:StopApplication", "kinesisanalytics:DeleteApplication",
        "kinesisanalytics:TagResource", "kinesisanalytics:ListTagsForResource",
        "iam:PassRole",
    }


def test_operator_pass_role_is_limited_to_the_spec_roles_and_their_services():
    statements = [s for s in iam_documents()["operator-policy.json"]["Statement"] if s["Action"] == "iam:PassRole"]
    services = {}
    for statement in statements:
        assert isinstance(statement["Resource"], str)
        assert statement["Resource"].startswith("arn:aws:iam::<ACCOUNT_ID>:role/<")
        services[statement["Resource"]] = statement["Condition"]["StringEquals"]["iam:PassedToService"]
    assert sorted(services.values()) == [
        "firehose.amazonaws.com", "glue.amazonaws.com", "kinesisanalytics.amazonaws.com",
    ]


def test_aggregator_policy_reads_the_stream_and_writes_only_its_prefixes():
    document = iam_documents()["aggregator-policy.json"]
    assert actions_of(document) == {
        "kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords",
        # Enhanced fan-out (spec.aggregation.enhancedFanOut): its own consumer only, which the
        # operator registers.
        "kinesis:DescribeStreamSummary", "kinesis:DescribeStreamConsumer",
        "kinesis:SubscribeToShard",
        "s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
    }
    for statement in document["Statement"]:
        if "kinesis:SubscribeToShard" in statement["Action"]:
            assert statement["Resource"].endswith(":stream/<STREAM_NAME>/consumer/<PIPELINE_NAME>-aggregator:*")
    for statement in document["Statement"]:
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            # The prefixes the aggregator writes (operator/tests/iam_contract.rs derives them from
            # the aggregator's configuration and checks this policy against them).
            if resource.startswith("arn:aws:s3:::") and "/" in resource:
                assert resource.split("/", 1)[1] in (
                    "curated/<GLUE_TABLE>/*", "curated/dead_letter/*", "curated/_checkpoints/*",
                    # Backfills read the raw archive (and only it) of the raw bucket.
                    "<RAW_PREFIX>*",
                ), resource
            if resource.startswith("arn:aws:s3:::<RAW_BUCKET>"):
                assert statement["Action"] in ("s3:GetObject", "s3:ListBucket"), statement
            if resource == "arn:aws:s3:::<CURATED_BUCKET>":
                assert statement["Condition"]["StringLike"]["s3:prefix"] == [
                    "curated/<GLUE_TABLE>/*", "curated/_checkpoints/*",
                ]


def test_collector_policy_only_writes_the_stream():
    assert actions_of(iam_documents()["collector-policy.json"]) == {
        "kinesis:DescribeStreamSummary", "kinesis:PutRecords",
    }


def test_viewer_policy_queries_its_workgroup_and_reads_the_table():
    document = iam_documents()["viewer-policy.json"]
    assert actions_of(document) == {
        "athena:StartQueryExecution", "athena:GetQueryExecution", "athena:GetQueryResults",
        "athena:StopQueryExecution",
        "glue:GetDatabase", "glue:GetTable", "glue:GetPartition", "glue:GetPartitions",
        "s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:PutObject",
        "s3:AbortMultipartUpload",
    }
    for statement in document["Statement"]:
        if "s3:PutObject" in statement["Action"]:
            assert statement["Resource"] == "arn:aws:s3:::<QUERY_RESULTS_BUCKET>/<RESULTS_PREFIX>*"


@pytest.mark.parametrize("who", ["operator", "aggregator", "collector", "viewer"])
def test_pod_trust_policies(who):
    documents = iam_documents()
    (irsa,) = documents[f"{who}-trust-irsa.json"]["Statement"]
    assert irsa["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert ":oidc-provider/oidc.eks.<REGION>.amazonaws.com/id/<OIDC_ID>" in irsa["Principal"]["Federated"]
    conditions = irsa["Condition"]["StringEquals"]
    assert conditions["oidc.eks.<REGION>.amazonaws.com/id/<OIDC_ID>:aud"] == "sts.amazonaws.com"
    assert conditions["oidc.eks.<REGION>.amazonaws.com/id/<OIDC_ID>:sub"].startswith("system:serviceaccount:<")
    (pod_identity,) = documents[f"{who}-trust-pod-identity.json"]["Statement"]
    assert pod_identity["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert sorted(pod_identity["Action"]) == ["sts:AssumeRole", "sts:TagSession"]
    assert "aws:RequestTag/kubernetes-service-account" in pod_identity["Condition"]["StringEquals"]


@pytest.mark.parametrize(
    "role, service",
    [("firehose", "firehose.amazonaws.com"), ("glue-crawler", "glue.amazonaws.com"),
     ("managed-flink", "kinesisanalytics.amazonaws.com")],
)
def test_service_role_trust_policies(role, service):
    (statement,) = iam_documents()[f"{role}-role-trust.json"]["Statement"]
    assert statement["Principal"] == {"Service": service}
    assert statement["Action"] == "sts:AssumeRole"
    assert "<ACCOUNT_ID>" in json.dumps(statement["Condition"])


# ---------------------------------------------------------------------------------------------
# Docs that other files point to


def test_install_doc_covers_crd_upgrades_and_the_contract():
    text = (ROOT / "docs" / "install.md").read_text()
    assert "kubectl apply --server-side -f charts/clickheatmap-operator/crds/" in text
    for flag in ("--metrics-port", "--watch-namespaces", "--leader-election", "--aggregator-image",
                 "--log-format", "POD_NAMESPACE", "POD_NAME", "AWS_REGION"):
        assert flag in text, flag
    for link in ("iam/README.md", "troubleshooting.md", "../deploy/argocd/health.lua",
                 "../examples/argocd/argocd-cm-health.yaml"):
        assert (ROOT / "docs" / link).resolve().is_file(), link


def test_troubleshooting_doc_covers_every_reason():
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    for reason in ("InvalidSpec", "Conflict", "AccessDenied", "NotFound", "Throttled", "Retrying",
                   "Provisioning"):
        assert f"## Ready False, reason {reason}" in text, reason


CONTAINERFILE = ROOT / "Containerfile"


def containerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_offline_containerfile_matches_the_dockerfile_image():
    """The offline image (scripts/build-image.sh) and the BuildKit one run the same way: one
    stage FROM scratch, no RUN (there is no shell), the same user, entrypoint and port. The
    node end-to-end suite checks the built archive itself (binaries, user, entrypoint)."""
    offline = containerfile_instructions()
    runtime = stages()[-1]
    assert offline[0] == ("FROM", "scratch")
    assert [k for k, _ in offline].count("FROM") == 1
    assert not [rest for keyword, rest in offline if keyword == "RUN"]
    for keyword in ("USER", "ENTRYPOINT", "EXPOSE", "LABEL"):
        assert [r for k, r in offline if k == keyword] == [r for k, r in runtime if k == keyword], keyword
    assert ("COPY", "rootfs/ /") in offline
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    for binary in ("clickheatmap-operator", "clickheatmap-aggregator", "clickheatmap-collector", "clickheatmap-viewer"):
        assert binary in script, binary
