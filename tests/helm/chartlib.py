"""What test_chart.py and render_commands.py share: the chart's location, the
Helm SDK (helm-python-sdk, no helm binary), rendering, and reading the
rendered manifests.

Needs the venv of scripts/chart-test.sh (target/chart-venv).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

try:
    import helm_python as helm
    import yaml
except ImportError as exc:  # pragma: no cover - environment problem
    sys.exit(
        f"{Path(sys.argv[0]).name}: missing dependency ({exc}); run it with "
        "target/chart-venv/bin/python (scripts/chart-test.sh creates that venv "
        "with helm-python-sdk and kubernetes-validate)"
    )

REPO = Path(__file__).resolve().parents[2]
# FERRY_CHART: another copy of the chart (used to check that the checks fail).
CHART = Path(os.environ.get("FERRY_CHART", REPO / "deploy" / "helm" / "ferry")).resolve()
RELEASE = "ferry"
NAMESPACE = "ferry-system"


def render(chart: Any, values: dict[str, Any], namespace: str = NAMESPACE, release: str = RELEASE) -> dict[str, str]:
    """`helm template` (as for an install): template path -> rendered text."""
    return chart.render(values, name=release, namespace=namespace, is_install=True)


def parse_manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """The objects of a rendering, each with its template path as __source."""
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__source", path)
                docs.append(doc)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of user values over defaults: maps merge key by key,
    anything else (lists included) is replaced, and null deletes the key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_user_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm CLI's merging of several user value sources (-f files, --set):
    maps merge key by key, anything else is replaced; nulls are kept (they
    delete the chart's default when the chart's values are coalesced)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_user_values(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
