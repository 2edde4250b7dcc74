"""Shared fixtures of the Helm chart tests.

The chart is loaded, linted and rendered by the real Helm v4 library through helm-python-sdk
(`helm_python`), offline: no helm binary and no cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "clickheatmap-operator"
VALUES_FULL = Path(__file__).resolve().parent / "values-full.yaml"

RELEASE = "clickheatmap-operator"
NAMESPACE = "clickheatmap-system"


@pytest.fixture(scope="session")
def chart() -> helm.Chart:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def full_values() -> dict[str, Any]:
    return yaml.safe_load(VALUES_FULL.read_text())


class Rendered:
    """The objects a render produced, with NOTES.txt kept apart."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.notes = ""
        self.objects: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc["__template__"] = path
                    self.objects.append(doc)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"want one {kind}, got {len(found)}"
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)


@pytest.fixture(scope="session")
def render(chart: helm.Chart):
    def _render(
        values: dict[str, Any] | None = None, namespace: str = NAMESPACE, name: str = RELEASE
    ) -> Rendered:
        return Rendered(chart.render(values, name=name, namespace=namespace, is_install=True))

    return _render
