"""The CRD in the chart's crds/ folder is exactly what the Rust types generate.

The generator is `cargo run -q -p clickheatmap-crds --features resource --bin crdgen`. By default
the test runs it with CARGO_TARGET_DIR=target/helm-crdgen in this checkout (override with HELM_TEST_CARGO_TARGET_DIR),
which takes under a minute on a warm cargo registry. A CI script that has already run the
generator can hand its output over instead: CRDGEN_OUTPUT=/path/to/crd.yaml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import CHART_DIR, ROOT

CRD_FILE = CHART_DIR / "crds" / "clickheatmap.io_clickheatmappipelines.yaml"


@pytest.fixture(scope="module")
def generated_crd() -> str:
    prepared = os.environ.get("CRDGEN_OUTPUT")
    if prepared:
        return Path(prepared).read_text()
    cargo = shutil.which("cargo")
    assert cargo, "cargo is needed to run crdgen (or set CRDGEN_OUTPUT to its output)"
    env = dict(os.environ)
    # Inside this checkout: two checkouts sharing one target directory could run each other's
    # crdgen binary.
    env["CARGO_TARGET_DIR"] = os.environ.get(
        "HELM_TEST_CARGO_TARGET_DIR", str(ROOT / "target" / "helm-crdgen")
    )
    result = subprocess.run(
        [cargo, "run", "-q", "-p", "clickheatmap-crds", "--features", "resource",
         "--bin", "crdgen"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )
    assert result.returncode == 0, f"crdgen failed:\n{result.stderr}"
    return result.stdout


def test_chart_crd_equals_generated(generated_crd):
    committed = CRD_FILE.read_text()
    assert committed == generated_crd, (
        "charts/clickheatmap-operator/crds/ is stale: regenerate it with\n"
        "  cargo run -q -p clickheatmap-crds --features resource --bin crdgen "
        "> charts/clickheatmap-operator/crds/clickheatmap.io_clickheatmappipelines.yaml"
    )


BACKFILL_CRD_FILE = CHART_DIR / "crds" / "clickheatmap.io_clickheatmapbackfills.yaml"


def test_chart_ships_only_the_generated_crds(chart):
    crds = sorted(chart.crds, key=lambda c: c["name"])
    assert [c["name"] for c in crds] == [
        "crds/clickheatmap.io_clickheatmapbackfills.yaml",
        "crds/clickheatmap.io_clickheatmappipelines.yaml",
    ]
    assert crds[0]["data"] == BACKFILL_CRD_FILE.read_text()
    assert crds[1]["data"] == CRD_FILE.read_text()
    assert sorted(p.name for p in (CHART_DIR / "crds").iterdir()) == sorted(
        [CRD_FILE.name, BACKFILL_CRD_FILE.name]
    )


def test_backfill_crd_is_a_namespaced_request_with_a_status():
    crd = yaml.safe_load(BACKFILL_CRD_FILE.read_text())
    assert crd["metadata"]["name"] == "clickheatmapbackfills.clickheatmap.io"
    assert crd["spec"]["names"]["shortNames"] == ["chb"]
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["from", "pipeline", "to"]
    rules = [rule["rule"] for rule in spec["x-kubernetes-validations"]]
    assert "self == oldSelf" in rules


def test_crd_matches_the_rbac_and_health_check():
    crd = yaml.safe_load(CRD_FILE.read_text())
    assert crd["metadata"]["name"] == "clickheatmappipelines.clickheatmap.io"
    assert crd["spec"]["group"] == "clickheatmap.io"
    assert crd["spec"]["names"]["plural"] == "clickheatmappipelines"
    assert crd["spec"]["names"]["kind"] == "ClickHeatmapPipeline"
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1"
    # The operator patches status through the subresource, and the health check reads these.
    assert version["subresources"] == {"status": {}}
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert "observedGeneration" in status
    condition = status["conditions"]["items"]["properties"]
    assert {"type", "status", "reason", "message", "observedGeneration"} <= set(condition)
