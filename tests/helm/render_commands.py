#!/usr/bin/env python3
"""Render the Helm chart deploy/helm/ferry and print how it runs the binaries.

For end-to-end tests that start ferry-proxy and ferry-control-plane the way
the chart would. Run it with the venv of scripts/chart-test.sh:

    target/chart-venv/bin/python tests/helm/render_commands.py \\
        [--set KEY=VALUE]... [--set-string KEY=VALUE]... [--set-json KEY=JSON]... \\
        [--values FILE | -f FILE]... [--namespace NS] [--release-name NAME]

The chart is rendered like `helm template` with its default values and the
given overrides, merged as the Helm CLI merges them: every --values file in
order, then every --set-json, then every --set, then every --set-string.
(One difference: `--set list[1]=x` replaces a list given in a values file
instead of changing one element of it.) Values the chart's values.schema.json
rejects make it exit with status 2 and the reason on stderr; any other
problem, 1.

Output on stdout, one JSON object:

    {
      "proxy":        CONTAINER,
      "controlPlane": CONTAINER
    }

    CONTAINER = {"command": [str, ...], "args": [str, ...], "env": [ENV, ...],
                 "mounts": [MOUNT, ...], "runAsUser": int, "runAsGroup": int,
                 "readOnlyRootFilesystem": bool, "hostNetwork": bool,
                 "capabilities": {"add": [str, ...], "drop": [str, ...]}}
    MOUNT = {"mountPath": str, "readOnly": bool, "volume": VOLUME}
    VOLUME = {"kind": "hostPath", "path": str, "type": str}
           | {"kind": "configMap", "name": str} | {"kind": "secret", "name": str}
           | {"kind": "emptyDir"}
           | {"kind": "serviceAccountToken", "audience": str, "path": str}
           | {"kind": "other", "spec": {...}}   (as in the manifest)

runAsUser/runAsGroup: the container's, else the pod's, else 0.

"proxy" is the first container of the DaemonSet ferry-proxy, "controlPlane"
the first container of the Deployment ferry-control-plane. command and args
are exactly as in the manifest: `$(NAME)` in them is Kubernetes' reference
to the container's environment variable NAME (the proxy gets
`--node $(FERRY_NODE_NAME)`), which the kubelet expands and a test must
expand itself (`$$` stands for `$`). env lists the container's variables in
manifest order (a later entry with the same name wins), each one of:

    {"name": str, "value": str}                      a literal value
    {"name": str, "fieldRef": str}                   the downward API field with
                                                     this fieldPath, e.g.
                                                     "spec.nodeName" or
                                                     "metadata.namespace"
    {"name": str, "valueFrom": {...}}                any other source (secretKeyRef,
                                                     configMapKeyRef, resourceFieldRef),
                                                     as in the manifest
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# chartlib beside this file; no __pycache__ left in the work tree.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

import chartlib  # noqa: E402
from chartlib import helm, yaml  # noqa: E402

# Output key -> (kind, name) of the workload whose first container it shows.
WORKLOADS = {
    "proxy": ("DaemonSet", "ferry-proxy"),
    "controlPlane": ("Deployment", "ferry-control-plane"),
}


def env_entry(var: dict[str, Any]) -> dict[str, Any]:
    source = var.get("valueFrom")
    if source is None:
        return {"name": var["name"], "value": str(var.get("value", ""))}
    if set(source) == {"fieldRef"}:
        return {"name": var["name"], "fieldRef": source["fieldRef"]["fieldPath"]}
    return {"name": var["name"], "valueFrom": source}


def container_commands(docs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (kind, name) in WORKLOADS.items():
        found = chartlib.find(docs, kind, name)
        if len(found) != 1:
            raise RuntimeError(f"the chart rendered {len(found)} {kind}/{name}, expected one")
        spec = chartlib.pod_spec(found[0])
        first = spec["containers"][0]
        volumes = {v["name"]: volume_entry(v) for v in spec.get("volumes", [])}
        pod_security = spec.get("securityContext") or {}
        security = first.get("securityContext") or {}
        out[key] = {
            "command": [str(a) for a in first.get("command", [])],
            "args": [str(a) for a in first.get("args", [])],
            "env": [env_entry(v) for v in first.get("env", [])],
            "mounts": [
                {
                    "mountPath": m["mountPath"],
                    "readOnly": bool(m.get("readOnly", False)),
                    "volume": volumes.get(m["name"], {"kind": "missing", "name": m["name"]}),
                }
                for m in first.get("volumeMounts", [])
            ],
            "runAsUser": security.get("runAsUser", pod_security.get("runAsUser", 0)),
            "runAsGroup": security.get("runAsGroup", pod_security.get("runAsGroup", 0)),
            "readOnlyRootFilesystem": bool(security.get("readOnlyRootFilesystem", False)),
            "capabilities": {
                "add": list((security.get("capabilities") or {}).get("add", [])),
                "drop": list((security.get("capabilities") or {}).get("drop", [])),
            },
            "hostNetwork": bool(spec.get("hostNetwork", False)),
        }
    return out


def volume_entry(volume: dict[str, Any]) -> dict[str, Any]:
    """What a volume holds, as the test must provide it."""
    if "hostPath" in volume:
        return {"kind": "hostPath", "path": volume["hostPath"]["path"], "type": volume["hostPath"].get("type", "")}
    if "configMap" in volume:
        return {"kind": "configMap", "name": volume["configMap"]["name"]}
    if "secret" in volume:
        return {"kind": "secret", "name": volume["secret"]["secretName"]}
    if "emptyDir" in volume:
        return {"kind": "emptyDir"}
    if "projected" in volume:
        for source in volume["projected"].get("sources", []):
            token = source.get("serviceAccountToken")
            if token is not None:
                return {"kind": "serviceAccountToken", "audience": token.get("audience", ""), "path": token["path"]}
    return {"kind": "other", "spec": volume}


def user_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in args.values:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise helm.HelmValuesError(f"{path}: a values file must hold a map")
        values = chartlib.merge_user_values(values, loaded)
    for parse, expressions in (
        (helm.parse_set_json, args.set_json),
        (helm.parse_set_string, args.set),
        (helm.parse_set_string_values, args.set_string),
    ):
        for expression in expressions:
            values = chartlib.merge_user_values(values, parse(expression))
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render deploy/helm/ferry and print the proxy's and the control plane's command, args and env as JSON.",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as helm --set")
    parser.add_argument("--set-string", action="append", default=[], metavar="KEY=VALUE", help="as helm --set-string")
    parser.add_argument("--set-json", action="append", default=[], metavar="KEY=JSON", help="as helm --set-json")
    parser.add_argument("-f", "--values", action="append", default=[], metavar="FILE", help="as helm --values")
    parser.add_argument("--namespace", default=chartlib.NAMESPACE, help=f"release namespace (default {chartlib.NAMESPACE})")
    parser.add_argument("--release-name", default=chartlib.RELEASE, help=f"release name (default {chartlib.RELEASE})")
    args = parser.parse_args(argv)

    chart = helm.Chart.load(chartlib.CHART)
    try:
        values = user_values(args)
        docs = chartlib.parse_manifests(chartlib.render(chart, values, namespace=args.namespace, release=args.release_name))
        out = container_commands(docs)
    except helm.HelmValuesError as exc:
        print(f"render_commands: invalid values: {exc}", file=sys.stderr)
        return 2
    except (helm.HelmError, OSError, RuntimeError, yaml.YAMLError) as exc:
        print(f"render_commands: {exc}", file=sys.stderr)
        return 1
    finally:
        chart.close()
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
