"""Renders the chart with the real Helm library (helm-python-sdk) and prints the objects as JSON.

Used by the operator's end-to-end suite (operator/tests/e2e), which applies what a user's
`helm install` would create:

    python tests/helm/render.py --release R --namespace NS --values '{"replicaCount": 2}'

Prints {"crds": [...], "objects": [...]}: the chart's crds/ folder (which Helm installs before
the templates and never upgrades) and the rendered templates, NOTES.txt left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import helm_python as helm
import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "clickheatmap-operator"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--release", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--values", default="{}", help="values as a JSON object")
    args = parser.parse_args()
    values = json.loads(args.values)
    crds = []
    for path in sorted((CHART_DIR / "crds").glob("*.yaml")):
        crds.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    objects = []
    with helm.Chart.load(CHART_DIR) as chart:
        manifests = chart.render(
            values, name=args.release, namespace=args.namespace, is_install=True
        )
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    json.dump({"crds": crds, "objects": objects}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
