#!/usr/bin/env python3
"""Offline tests of the Helm chart deploy/helm/ferry.

Needs helm-python-sdk (the Helm v4 SDK, no helm binary) and
kubernetes-validate; scripts/chart-test.sh sets up both in a venv and runs
this file. Checks:

- `helm lint --strict` finds no warning or error, for every value set and
  every supported Kubernetes version;
- values.schema.json closes every object (additionalProperties: false),
  every key of values.yaml is documented there by a comment, and the schema
  rejects invalid value sets, at render time too;
- every manifest rendered from each valid value set is valid, strictly (no
  unknown fields), against the Kubernetes 1.29 to 1.33 API schemas, but the
  Prometheus Operator's PodMonitors and PrometheusRule (custom resources,
  which those schemas lack): their selectors, ports and alerts are checked
  here instead, every alert reading only metrics the binaries' sources
  register;
- the RBAC is exactly the documented least privilege, the proxy has none,
  the security contexts, probes, arguments, environment, images,
  scheduling, update strategies, disruption budget and volumes are as
  designed;
- the `helm test` pods' scripts pass and fail when they should (run here
  with stand-ins for curl, sleep and httpd, under dash and mawk and, when
  it is installed, under busybox as in the test images);
- tests/helm/render_commands.py prints the binaries' command lines;
- every flag the chart passes is one the built binaries accept, with a
  value they accept where they list the possible ones.

Exit status 0 when every check passes; otherwise 1, with one line per failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

# chartlib beside this file; no __pycache__ left in the work tree.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chartlib import (  # noqa: E402
    CHART,
    NAMESPACE,
    RELEASE,
    REPO,
    deep_merge,
    find,
    helm,
    parse_manifests,
    pod_spec,
    render,
    yaml,
)

try:
    import kubernetes_validate.utils as kv_utils
    from kubernetes_validate.version import __version__ as KV_VERSION
except ImportError as exc:  # pragma: no cover - environment problem
    sys.exit(
        f"test_chart.py: missing dependency ({exc}); run scripts/chart-test.sh, "
        "which installs helm-python-sdk and kubernetes-validate in a venv"
    )

KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
HELM_SEVERITY = {0: "unknown", 1: "info", 2: "warning", 3: "error"}
APP_VERSION = "0.1.0"

# ---------------------------------------------------------------------------
# Value sets

DIGEST = "sha256:" + "0123456789abcdef" * 4

VALID_VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    # What a production install sets: a private registry pinned by digest,
    # pull secrets, no kube-proxy, tracing, extra environment, annotations.
    "production": {
        "image": {
            "registry": "registry.example.com:5000",
            "repository": "mirror/ferry-mesh/ferry",
            "tag": "0.1.0",
            "digest": DIGEST,
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "regcred"}, {"name": "mirror-pull"}],
        "logLevel": "debug",
        "metrics": {"istio": True},
        "otlp": {
            "endpoint": "https://otel-collector.observability.svc:4318",
            "protocol": "http/protobuf",
            "compression": "gzip",
            "timeoutMillis": 5000,
            "headersSecret": {"name": "otlp-api-key", "key": "headers"},
            "caSecret": {"name": "observability-ca", "key": "ca.pem"},
            "clientCertSecret": "ferry-otlp-client",
        },
        "controlPlane": {
            "replicas": 3,
            "drainTimeoutSeconds": 25,
            "priorityClassName": "mesh-critical",
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mesh", "effect": "NoSchedule"}],
            "affinity": {
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "topologyKey": "topology.kubernetes.io/zone",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "control-plane"}},
                        }
                    ]
                }
            },
            "podDisruptionBudget": {"enabled": True, "maxUnavailable": "34%"},
            "extraEnv": [
                {"name": "FERRY_TOKEN_CACHE", "value": "30s"},
                {"name": "GOMAXPROCS_HINT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            ],
            "podAnnotations": {"example.com/owner": "platform-team"},
            "podLabels": {"example.com/cost-center": "mesh", "app.kubernetes.io/component": "not-the-chart-s"},
        },
        "proxy": {
            "kubeProxyReplacement": True,
            "iptablesBackend": "nft",
            "drainTimeoutSeconds": 30,
            "nodeSelector": {"kubernetes.io/os": "linux", "node.example.com/mesh": "true"},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
            "extraEnv": [
                {"name": "FERRY_HBONE_STREAMS", "value": "200"},
                {"name": "FERRY_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "FERRY_LICENSE", "valueFrom": {"secretKeyRef": {"name": "ferry-license", "key": "key", "optional": True}}},
            ],
            "podAnnotations": {"example.com/owner": "platform-team", "cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
            "podLabels": {"example.com/cost-center": "mesh"},
        },
        "test": {
            "image": "registry.example.com:5000/tools/curl:8.11.0",
            "serverImage": "registry.example.com:5000/tools/busybox:1.37",
        },
    },
    "text-logs+otlp+user-ca+overrides": {
        "logFormat": "text",
        "logLevel": "info,ferry_proxy::hbone=trace",
        "otlp": {"endpoint": "http://otel-collector.observability.svc:4317", "sampler": "parentbased_traceidratio", "samplerArg": "0.5"},
        "meshByDefault": True,
        "controlPlane": {
            "caSecret": {"name": "my-mesh-ca", "create": False},
            # A podAnnotation wins over the chart's scrape annotation.
            "podAnnotations": {"prometheus.io/scrape": "false"},
        },
        "proxy": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "node.example.com/no-mesh", "operator": "DoesNotExist"}]}
                        ]
                    }
                }
            },
        },
    },
    "one-replica+custom-image+tolerations": {
        "image": {
            "registry": "registry.example.com",
            "repository": "mesh/ferry",
            "tag": "0.2.0-rc.1",
            "pullPolicy": "Always",
        },
        "controlPlane": {"replicas": 1},
        "proxy": {
            # Calico's veths, with iptables' wildcard (docs/kubernetes.md, CNIs).
            "captureInterface": "cali+",
            "tolerations": [
                {
                    "key": "node-role.kubernetes.io/control-plane",
                    "operator": "Exists",
                    "effect": "NoSchedule",
                },
                {
                    "key": "dedicated",
                    "operator": "Equal",
                    "value": "mesh",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
            ]
        },
    },
    "trust-domain+resources+no-extras": {
        "image": {"registry": "", "repository": "ferry-mesh/ferry"},
        "trustDomain": "prod.example.org",
        "clusterDomain": "k8s.internal",
        "tokenAudience": "ferry-prod",
        "metrics": {"scrapeAnnotations": False},
        "controlPlane": {
            "workloadCertTTL": 3600,
            "drainTimeoutSeconds": 0,
            "priorityClassName": "",
            "nodeSelector": {},
            # The default rollingUpdate stays in the values, unused.
            "updateStrategy": {"type": "Recreate"},
            "podDisruptionBudget": {"enabled": False},
            "resources": {
                "requests": {"cpu": "250m", "memory": "256Mi"},
                "limits": {"cpu": 2, "memory": "1Gi"},
            },
        },
        "proxy": {
            "captureInterface": "cilium_host",
            "accessLogRate": 0,
            "workerThreads": 4,
            "stateDir": "",
            "iptablesBackend": "legacy",
            "priorityClassName": "",
            "nodeSelector": {},
            "tolerations": [],
            "updateStrategy": {"type": "OnDelete"},
            "resources": {
                "requests": {"cpu": "500m", "memory": "128Mi", "ephemeral-storage": "64Mi"},
                "limits": {"memory": "512Mi"},
            },
        },
        "test": {"image": "registry.example.com/tools/curl:8.11.0"},
    },
    # Prometheus Operator: PodMonitors and the PrometheusRule, with the
    # labels a Prometheus' selectors pick, instead of the scrape annotations;
    # a short certificate lifetime moves the expiry alert's threshold.
    "prometheus-operator": {
        "metrics": {
            "scrapeAnnotations": False,
            "podMonitor": {"enabled": True, "interval": "1m30s", "labels": {"release": "kube-prometheus-stack"}},
            "alerts": {"enabled": True, "labels": {"release": "kube-prometheus-stack", "example.com/team": "mesh"}},
        },
        "controlPlane": {"workloadCertTTL": 7200},
    },
}

INVALID_VALUE_SETS: dict[str, dict[str, Any]] = {
    "logFormat xml": {"logFormat": "xml"},
    "negative replicas": {"controlPlane": {"replicas": -1}},
    "unknown key": {"proxy": {"captureInterfaces": "eth0"}},
    "unknown top-level key": {"podAnnotations": {"a": "b"}},
    "bad toleration operator": {"proxy": {"tolerations": [{"operator": "Sometimes"}]}},
    "string meshByDefault": {"meshByDefault": "yes"},
    "negative access log rate": {"proxy": {"accessLogRate": -5}},
    "no worker threads": {"proxy": {"workerThreads": 0}},
    "trust domain with a space": {"trustDomain": "my mesh"},
    "relative state folder": {"proxy": {"stateDir": "var/lib/ferry"}},
    "capture interface name too long": {"proxy": {"captureInterface": "averyveryverylongname"}},
    "unknown OTLP sampler": {"otlp": {"sampler": "sometimes"}},
    "OTLP sampler ratio above 1": {"otlp": {"samplerArg": "2"}},
    "OTLP over http/json": {"otlp": {"protocol": "http/json"}},
    "Istio metrics as a string": {"metrics": {"istio": "yes"}},
    "OTLP zstd compression": {"otlp": {"compression": "zstd"}},
    "OTLP timeout as a duration": {"otlp": {"timeoutMillis": "10s"}},
    "OTLP headers Secret without a key": {"otlp": {"headersSecret": {"name": "k", "key": ""}}},
    "OTLP CA Secret with an upper-case name": {"otlp": {"caSecret": {"name": "MyCA", "key": "ca.crt"}}},
    "string kubeProxyReplacement": {"proxy": {"kubeProxyReplacement": "yes"}},
    "iptables backend ipvs": {"proxy": {"iptablesBackend": "ipvs"}},
    "registry host in the repository": {"image": {"repository": "ghcr.io/ferry-mesh/ferry"}},
    "digest without an algorithm": {"image": {"digest": "0123456789abcdef0123456789abcdef"}},
    "tag with a colon": {"image": {"tag": "v1:latest"}},
    "pull secret as a string": {"imagePullSecrets": ["regcred"]},
    "log level with a space": {"logLevel": "very loud"},
    "negative drain timeout": {"proxy": {"drainTimeoutSeconds": -1}},
    "fractional drain timeout": {"controlPlane": {"drainTimeoutSeconds": 2.5}},
    "extra env without a name": {"proxy": {"extraEnv": [{"value": "x"}]}},
    "extra env with value and valueFrom": {
        "controlPlane": {"extraEnv": [{"name": "X", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}
    },
    "extra env with two sources": {
        "proxy": {
            "extraEnv": [
                {
                    "name": "X",
                    "valueFrom": {
                        "fieldRef": {"fieldPath": "spec.nodeName"},
                        "secretKeyRef": {"name": "s", "key": "k"},
                    },
                }
            ]
        }
    },
    "number as an annotation": {"controlPlane": {"podAnnotations": {"example.com/replicas": 2}}},
    "label value with a space": {"proxy": {"podLabels": {"team": "mesh team"}}},
    "misspelled affinity": {"proxy": {"affinity": {"nodeAfinity": {}}}},
    "pod anti-affinity term without topologyKey": {
        "controlPlane": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {}}]}}}
    },
    "strategy OnDelete for the control plane": {"controlPlane": {"updateStrategy": {"type": "OnDelete"}}},
    "strategy Recreate for the proxy": {"proxy": {"updateStrategy": {"type": "Recreate"}}},
    "proxy maxSurge and maxUnavailable both 0": {"proxy": {"updateStrategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}},
    "proxy maxSurge negative": {"proxy": {"updateStrategy": {"rollingUpdate": {"maxSurge": -1}}}},
    "disruption budget maxUnavailable 0": {"controlPlane": {"podDisruptionBudget": {"maxUnavailable": 0}}},
    "scrapeAnnotations as a string": {"metrics": {"scrapeAnnotations": "true"}},
    "podMonitor.enabled as a string": {"metrics": {"podMonitor": {"enabled": "yes"}}},
    "unknown podMonitor key": {"metrics": {"podMonitor": {"enabled": True, "port": 15020}}},
    "podMonitor interval without a unit": {"metrics": {"podMonitor": {"interval": "30"}}},
    "podMonitor label value with a space": {"metrics": {"podMonitor": {"labels": {"release": "kube prometheus"}}}},
    "alerts.enabled as a string": {"metrics": {"alerts": {"enabled": "true"}}},
    "unknown alerts key": {"metrics": {"alerts": {"enabled": True, "severity": "critical"}}},
    "empty test server image": {"test": {"serverImage": ""}},
}

# ---------------------------------------------------------------------------
# Expected RBAC (normalised rules: apiGroups, resources, verbs, resourceNames)

Rule = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def rule(groups: list[str], resources: list[str], verbs: list[str], names: list[str] | None = None) -> Rule:
    return (tuple(sorted(groups)), tuple(sorted(resources)), tuple(sorted(verbs)), tuple(sorted(names or [])))


EXPECTED_CLUSTER_RULES = sorted(
    [
        rule([""], ["pods", "services", "namespaces", "nodes"], ["get", "list", "watch"]),
        rule(["discovery.k8s.io"], ["endpointslices"], ["list", "watch"]),
        rule(["networking.k8s.io"], ["networkpolicies"], ["list", "watch"]),
        rule(["authentication.k8s.io"], ["tokenreviews"], ["create"]),
        rule(["authorization.k8s.io"], ["subjectaccessreviews"], ["create"]),
    ]
)

# The role the status API requires of callers' tokens (bound by users).
EXPECTED_VIEWER_RULES = sorted(
    [
        rule(["ferry.dev"], ["meshstatus"], ["get"]),
        rule([""], ["pods"], ["get", "list"]),
        rule([""], ["pods/portforward"], ["create"]),
        rule([""], ["pods/log"], ["get"]),
        rule([""], ["configmaps"], ["get"], ["ferry-ca-root"]),
    ]
)


def expected_role_rules(values: dict[str, Any]) -> list[Rule]:
    ca = values["controlPlane"]["caSecret"]
    rules = [
        rule([""], ["secrets"], ["get"], [ca["name"]]),
        rule([""], ["configmaps"], ["get", "update"], ["ferry-ca-root"]),
        rule([""], ["configmaps"], ["create"]),
    ]
    if ca["create"]:
        # resourceNames cannot restrict create: a separate rule.
        rules.append(rule([""], ["secrets"], ["create"]))
    return sorted(rules)


def expect_rules(actual: list[Rule], expected: list[Rule], what: str) -> None:
    if actual != expected:
        def fmt(r: Rule) -> str:
            return f"apiGroups={list(r[0])} resources={list(r[1])} verbs={list(r[2])} resourceNames={list(r[3])}"

        extra = [fmt(r) for r in actual if r not in expected] + [
            f"(duplicate) {fmt(r)}" for i, r in enumerate(actual) if r in actual[:i]
        ]
        missing = [fmt(r) for r in expected if r not in actual]
        raise Failure(f"{what} differ from the least-privilege set: extra {extra}, missing {missing}")


def normalise_rules(rules: list[dict[str, Any]]) -> list[Rule]:
    out = []
    for r in rules:
        unknown = set(r) - {"apiGroups", "resources", "verbs", "resourceNames"}
        if unknown:
            raise AssertionError(f"rule has unexpected fields {sorted(unknown)}: {r}")
        out.append(rule(r.get("apiGroups", []), r.get("resources", []), r["verbs"], r.get("resourceNames", [])))
    return sorted(out)


# ---------------------------------------------------------------------------
# Helpers


class Failure(AssertionError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)


def expect_eq(actual: Any, expected: Any, what: str) -> None:
    if actual != expected:
        raise Failure(f"{what}: expected {expected!r}, got {actual!r}")


def strip_source(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "__source"}


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    expect(len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}")
    return found[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    expect(len(found) == 1, f"{workload['kind']}/{workload['metadata']['name']}: no container {name!r}")
    return found[0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in c.get("env", [])}


def env_values(c: dict[str, Any]) -> dict[str, str]:
    """The literal values of a container's environment."""
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


RESTRICTED = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

COMMON_LABELS = {
    "app.kubernetes.io/name": "ferry",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/version": APP_VERSION,
    "app.kubernetes.io/managed-by": "Helm",
    "app.kubernetes.io/part-of": "ferry",
    "helm.sh/chart": f"ferry-{APP_VERSION}",
}


def expected_image(values: dict[str, Any]) -> str:
    image = values["image"]
    name = f"{image['registry']}/{image['repository']}" if image["registry"] else image["repository"]
    if image["digest"]:
        return f"{name}@{image['digest']}"
    return f"{name}:{image['tag'] or APP_VERSION}"


def scrape_annotations(values: dict[str, Any], port: int, extra: dict[str, str]) -> dict[str, str]:
    annotations = {}
    if values["metrics"]["scrapeAnnotations"]:
        annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
    return {**annotations, **extra}


def expected_strategy(value: dict[str, Any]) -> dict[str, Any]:
    """A Deployment's strategy or a DaemonSet's updateStrategy: rollingUpdate
    only with type RollingUpdate (the API refuses it with another type)."""
    if value["type"] == "RollingUpdate" and value.get("rollingUpdate"):
        return {"type": "RollingUpdate", "rollingUpdate": value["rollingUpdate"]}
    return {"type": value["type"]}


def probe(path: str, port: int, period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def expected_probes(port: int) -> dict[str, Any]:
    return {
        "startupProbe": probe("/healthz/live", port, 2, 2, 30),
        "livenessProbe": probe("/healthz/live", port, 10, 3, 3),
        "readinessProbe": probe("/healthz/ready", port, 5, 3, 3),
    }


def check_pod_metadata(ctx: str, what: str, workload: dict[str, Any], component: str, values: dict[str, Any], port: int) -> None:
    """Labels (the chart's win over podLabels) and annotations of a pod template."""
    comp = values[component]
    meta = workload["spec"]["template"]["metadata"]
    own = {**COMMON_LABELS, "app.kubernetes.io/component": workload["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]}
    expect_eq(meta.get("labels"), {**comp["podLabels"], **own}, f"{ctx} {what} pod labels")
    for k, v in workload["spec"]["selector"]["matchLabels"].items():
        expect_eq(meta["labels"].get(k), v, f"{ctx} {what} pod label {k} (selector)")
    expect_eq(meta.get("annotations", {}), scrape_annotations(values, port, comp["podAnnotations"]), f"{ctx} {what} pod annotations")


def check_scheduling(ctx: str, what: str, pod: dict[str, Any], comp: dict[str, Any], default_affinity: dict[str, Any] | None) -> None:
    expect_eq(pod.get("nodeSelector", {}), comp["nodeSelector"], f"{ctx} {what} nodeSelector")
    expect_eq(pod.get("tolerations", []), comp["tolerations"], f"{ctx} {what} tolerations")
    expect_eq(pod.get("affinity"), comp["affinity"] or default_affinity, f"{ctx} {what} affinity")
    if comp["priorityClassName"]:
        expect_eq(pod.get("priorityClassName"), comp["priorityClassName"], f"{ctx} {what} priorityClassName")
    else:
        expect("priorityClassName" not in pod, f"{ctx} {what}: no priorityClassName when the value is empty")
    expect_eq(pod.get("terminationGracePeriodSeconds"), comp["drainTimeoutSeconds"] + 5, f"{ctx} {what} terminationGracePeriodSeconds (drain + 5)")


def check_env(ctx: str, what: str, c: dict[str, Any], chart_env: list[dict[str, Any]], values: dict[str, Any], component: str) -> None:
    """The chart's own variables first, then extraEnv, in order."""
    expect_eq(c.get("env", []), chart_env + values[component]["extraEnv"], f"{ctx} {what} env")


# ---------------------------------------------------------------------------
# Checks


def check_lint(counts: dict[str, int]) -> None:
    problems = []
    runs = 0
    for kube in KUBE_VERSIONS:
        for set_name, values in VALID_VALUE_SETS.items():
            report = helm.lint(
                CHART, values or None, strict=True, namespace=NAMESPACE, kube_version=f"v{kube}"
            )
            runs += 1
            for msg in report.get("messages", []):
                if msg["severity"] >= 2 or msg["severity"] == 0:
                    problems.append(
                        f"[{set_name}, k8s {kube}] {HELM_SEVERITY.get(msg['severity'], '?')}: "
                        f"{msg['path']}: {msg['error'].strip()}"
                    )
            for err in report.get("errors", []):
                problems.append(f"[{set_name}, k8s {kube}] error: {err.strip()}")
    expect(not problems, "helm lint --strict:\n    " + "\n    ".join(sorted(set(problems))))
    counts["lint runs"] = runs


def check_schema_is_closed(counts: dict[str, int]) -> None:
    """Every object in values.schema.json forbids unknown keys (Helm's
    `global`, for use as a subchart, is the one open map) and every default
    value is described."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    expect_eq(schema.get("$schema"), "http://json-schema.org/draft-07/schema#", "schema dialect")
    open_objects: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            types = node.get("type")
            types = types if isinstance(types, list) else [types]
            if "object" in types and where != "/properties/global":
                if node.get("additionalProperties") is not False:
                    open_objects.append(where or "/")
            for key, child in node.items():
                walk(child, f"{where}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{where}/{i}")

    walk(schema, "")
    expect(not open_objects, f"schema objects without additionalProperties: false: {open_objects}")

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            ref = node["$ref"]
            expect(ref.startswith("#/"), f"unsupported $ref {ref}")
            target: Any = schema
            for part in ref[2:].split("/"):
                target = target[part]
            node = target
        return node

    undescribed: list[str] = []

    def cover(values: Any, node: dict[str, Any], where: str) -> None:
        node = resolve(node)
        if isinstance(values, dict):
            props = node.get("properties", {})
            patterns = node.get("patternProperties", {})
            for key, value in values.items():
                if key in props:
                    cover(value, props[key], f"{where}.{key}")
                    continue
                matching = [p for p in patterns if re.search(p, key)]
                if matching:
                    cover(value, patterns[matching[0]], f"{where}.{key}")
                else:
                    undescribed.append(f"{where}.{key}")

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    cover(defaults, schema, "")
    expect(not undescribed, f"values.yaml keys missing from values.schema.json: {undescribed}")
    counts["schema objects closed"] = 1


def check_values_documented(counts: dict[str, int]) -> None:
    """Every key of values.yaml has a comment right above it, or is a map
    whose keys all do (resources: requests: cpu needs no comment of its own
    once resources has one)."""
    entries: list[tuple[int, str, bool]] = []  # indent, key, commented
    commented = False
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            commented = False
            continue
        if stripped.startswith("#"):
            commented = True
            continue
        m = re.match(r"^( *)([A-Za-z0-9_./-]+):( |$)", line)
        if m:
            entries.append((len(m.group(1)), m.group(2), commented))
        commented = False

    def children(i: int) -> list[int]:
        indent = entries[i][0]
        out: list[int] = []
        for j in range(i + 1, len(entries)):
            if entries[j][0] <= indent:
                break
            out.append(j)
        if not out:
            return []
        direct = min(entries[j][0] for j in out)
        return [j for j in out if entries[j][0] == direct]

    undocumented: list[str] = []

    def visit(i: int, path: str) -> None:
        key_path = f"{path}.{entries[i][1]}" if path else entries[i][1]
        if entries[i][2]:
            return
        kids = children(i)
        if not kids:
            undocumented.append(key_path)
        for j in kids:
            visit(j, key_path)

    for i, (indent, _, _) in enumerate(entries):
        if indent == 0:
            visit(i, "")
    expect(not undocumented, f"values.yaml keys without a comment: {undocumented}")
    counts["values documented"] = len(entries)


def check_invalid_values_rejected(chart: Any, counts: dict[str, int]) -> None:
    accepted = []
    for name, values in INVALID_VALUE_SETS.items():
        try:
            chart.validate_schema(values)
            accepted.append(f"{name}: validate_schema accepted it")
        except helm.HelmValuesError:
            pass
        try:
            render(chart, values)
            accepted.append(f"{name}: render (helm template) accepted it")
        except helm.HelmValuesError:
            pass
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
        if not any(m["severity"] == 3 for m in report.get("messages", [])):
            accepted.append(f"{name}: helm lint found no error")
    expect(not accepted, "invalid values were not rejected:\n    " + "\n    ".join(accepted))
    counts["invalid value sets rejected"] = len(INVALID_VALUE_SETS)


# Custom resources of the Prometheus Operator: kubernetes-validate has only
# the built-in API schemas, so these are left out of its validation and
# checked by check_monitoring instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def check_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]], counts: dict[str, int]) -> None:
    supported = kv_utils.all_versions()
    missing = [v for v in KUBE_VERSIONS if v not in supported]
    expect(not missing, f"kubernetes-validate {KV_VERSION} has no schemas for Kubernetes {missing}")
    problems = []
    validated = 0
    skipped = 0
    for set_name, docs in rendered.items():
        for kube in KUBE_VERSIONS:
            for doc in docs:
                if (doc.get("apiVersion"), doc.get("kind")) in CRD_KINDS:
                    # Not a built-in kind: kubernetes-validate has no schema
                    # for it (check_monitoring checks its structure).
                    skipped += 1
                    continue
                what = f"[{set_name}, k8s {kube}] {doc['__source']}: {doc['kind']}/{doc['metadata']['name']}"
                try:
                    got = kv_utils.validate(strip_source(doc), kube, strict=True)
                    if got != kv_utils.major_minor(kube):
                        problems.append(f"{what}: validated against {got}, not {kube}")
                    validated += 1
                except kv_utils.ValidationError as exc:
                    path = ".".join(str(p) for p in exc.path)
                    problems.append(f"{what}: {path}: {exc.message}")
                except kv_utils.SchemaNotFoundError as exc:
                    problems.append(f"{what}: {exc.message}")
    expect(not problems, "Kubernetes schema validation:\n    " + "\n    ".join(problems))
    expect(skipped > 0, "no Prometheus Operator object was rendered: no value set enables them")
    counts["manifests valid"] = validated
    counts["custom resources skipped"] = skipped


def check_objects(set_name: str, values: dict[str, Any], docs: list[dict[str, Any]], namespace: str) -> None:
    """Structure of one rendering against the values it came from."""
    ctx = f"[{set_name}]"
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    expected_kinds = [
        "ClusterRole/ferry-control-plane",
        "ClusterRole/ferry-mesh-viewer",
        "ClusterRoleBinding/ferry-control-plane",
        "ConfigMap/ferry-config",
        "DaemonSet/ferry-proxy",
        "Deployment/ferry-control-plane",
        "Deployment/ferry-test-server",
        "Pod/ferry-test-mesh-traffic",
        "Role/ferry-control-plane",
        "RoleBinding/ferry-control-plane",
        "Service/ferry-control-plane",
        "Service/ferry-test-server",
        "ServiceAccount/ferry-control-plane",
        "ServiceAccount/ferry-proxy",
        "ServiceAccount/ferry-test-client",
        "ServiceAccount/ferry-test-server",
    ]
    if values["controlPlane"]["podDisruptionBudget"]["enabled"]:
        expected_kinds.append("PodDisruptionBudget/ferry-control-plane")
    if values["metrics"]["podMonitor"]["enabled"]:
        expected_kinds += ["PodMonitor/ferry-proxy", "PodMonitor/ferry-control-plane"]
    if values["metrics"]["alerts"]["enabled"]:
        expected_kinds.append("PrometheusRule/ferry")
    expect_eq(kinds, sorted(expected_kinds), f"{ctx} rendered objects")

    # Labels and namespaces.
    for d in docs:
        labels = d["metadata"].get("labels", {})
        for key, value in COMMON_LABELS.items():
            expect_eq(labels.get(key), value, f"{ctx} {d['kind']}/{d['metadata']['name']} label {key}")
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            expect_eq(d["metadata"].get("namespace"), namespace, f"{ctx} {d['kind']}/{d['metadata']['name']} namespace")

    image = expected_image(values)
    host = f"ferry-control-plane.{namespace}.svc"
    pull_secrets = values["imagePullSecrets"]

    # --- RBAC -----------------------------------------------------------------
    cr = one(docs, "ClusterRole", "ferry-control-plane")
    expect_rules(normalise_rules(cr["rules"]), EXPECTED_CLUSTER_RULES, f"{ctx} ClusterRole rules")
    expect("aggregationRule" not in cr, f"{ctx} ClusterRole must not aggregate")
    viewer = one(docs, "ClusterRole", "ferry-mesh-viewer")
    expect_rules(normalise_rules(viewer["rules"]), EXPECTED_VIEWER_RULES, f"{ctx} ClusterRole ferry-mesh-viewer rules")
    role = one(docs, "Role", "ferry-control-plane")
    expect_rules(normalise_rules(role["rules"]), expected_role_rules(values), f"{ctx} Role rules")

    cp_subject = [{"kind": "ServiceAccount", "name": "ferry-control-plane", "namespace": namespace}]
    crb = one(docs, "ClusterRoleBinding", "ferry-control-plane")
    expect_eq(crb["roleRef"], {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ferry-control-plane"}, f"{ctx} ClusterRoleBinding roleRef")
    expect_eq(crb["subjects"], cp_subject, f"{ctx} ClusterRoleBinding subjects")
    rb = one(docs, "RoleBinding", "ferry-control-plane")
    expect_eq(rb["roleRef"], {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ferry-control-plane"}, f"{ctx} RoleBinding roleRef")
    expect_eq(rb["subjects"], cp_subject, f"{ctx} RoleBinding subjects")
    for binding in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding"):
        for subject in binding.get("subjects", []):
            expect(
                subject.get("name") in ("ferry-control-plane",),
                f"{ctx} only the control plane has RBAC, but {binding['kind']}/{binding['metadata']['name']} binds {subject.get('name')}",
            )

    # --- control plane ----------------------------------------------------------
    cpv = values["controlPlane"]
    dep = one(docs, "Deployment", "ferry-control-plane")
    expect_eq(dep["spec"]["replicas"], cpv["replicas"], f"{ctx} control plane replicas")
    expect_eq(dep["spec"].get("strategy"), expected_strategy(cpv["updateStrategy"]), f"{ctx} control plane strategy")
    pod = dep["spec"]["template"]["spec"]
    expect_eq(pod["serviceAccountName"], "ferry-control-plane", f"{ctx} control plane serviceAccountName")
    expect_eq(pod.get("imagePullSecrets", []), pull_secrets, f"{ctx} control plane imagePullSecrets")
    cp_selector = dep["spec"]["selector"]["matchLabels"]
    default_cp_affinity = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": cp_selector}},
                }
            ]
        }
    }
    check_scheduling(ctx, "control plane", pod, cpv, default_cp_affinity)
    check_pod_metadata(ctx, "control plane", dep, "controlPlane", values, 15014)
    cp = container(dep, "control-plane")
    expect_eq(pod["containers"][0]["name"], "control-plane", f"{ctx} control plane first container")
    expect_eq(cp["image"], image, f"{ctx} control plane image")
    expect_eq(cp["imagePullPolicy"], values["image"]["pullPolicy"], f"{ctx} control plane pullPolicy")
    expect_eq(cp["command"], ["ferry-control-plane"], f"{ctx} control plane command")
    ca = cpv["caSecret"]
    expect_eq(
        cp["args"],
        [
            "--source", "kubernetes",
            "--listen", "0.0.0.0:15010",
            "--metrics-listen", "0.0.0.0:15014",
            "--ca-secret", ca["name"],
            f"--ca-secret-create={str(ca['create']).lower()}",
            "--server-name", host,
            "--token-audience", values["tokenAudience"],
            "--cluster-domain", values["clusterDomain"],
            "--trust-domain", values["trustDomain"],
            f"--mesh-by-default={str(values['meshByDefault']).lower()}",
            "--workload-cert-ttl", str(cpv["workloadCertTTL"]),
            "--drain-timeout", f"{cpv['drainTimeoutSeconds']}s",
            "--log-format", values["logFormat"],
        ],
        f"{ctx} control plane args",
    )
    check_env(
        ctx,
        "control plane",
        cp,
        [
            {"name": "FERRY_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "FERRY_REPLICA_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "RUST_LOG", "value": values["logLevel"]},
        ],
        values,
        "controlPlane",
    )
    expect_eq(
        {p["name"]: p["containerPort"] for p in cp["ports"]},
        {"grpc": 15010, "metrics": 15014},
        f"{ctx} control plane ports",
    )
    for kind, want in expected_probes(15014).items():
        expect_eq(cp.get(kind), want, f"{ctx} control plane {kind}")
    expect_eq(cp["securityContext"], RESTRICTED, f"{ctx} control plane securityContext")
    expect_eq(cp.get("resources"), cpv["resources"], f"{ctx} control plane resources")

    pdbs = find(docs, "PodDisruptionBudget", "ferry-control-plane")
    if cpv["podDisruptionBudget"]["enabled"]:
        pdb = pdbs[0]["spec"]
        expect_eq(
            pdb,
            {
                "maxUnavailable": cpv["podDisruptionBudget"]["maxUnavailable"],
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
                "selector": {"matchLabels": cp_selector},
            },
            f"{ctx} control plane PodDisruptionBudget",
        )

    svc = one(docs, "Service", "ferry-control-plane")
    expect_eq(
        sorted((p["name"], p["port"]) for p in svc["spec"]["ports"]),
        [("grpc", 15010), ("metrics", 15014)],
        f"{ctx} Service ports",
    )
    expect_eq(svc["spec"]["selector"], cp_selector, f"{ctx} Service selector")

    # --- proxy --------------------------------------------------------------------
    pxv = values["proxy"]
    sa = one(docs, "ServiceAccount", "ferry-proxy")
    expect_eq(sa.get("automountServiceAccountToken"), False, f"{ctx} proxy ServiceAccount automount")
    ds = one(docs, "DaemonSet", "ferry-proxy")
    expect_eq(ds["spec"].get("updateStrategy"), expected_strategy(pxv["updateStrategy"]), f"{ctx} proxy updateStrategy")
    if set_name == "defaults":
        expect_eq(
            ds["spec"]["updateStrategy"],
            {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            f"{ctx} proxy default updateStrategy",
        )
    pod = ds["spec"]["template"]["spec"]
    expect_eq(pod["serviceAccountName"], "ferry-proxy", f"{ctx} proxy serviceAccountName")
    expect_eq(pod.get("imagePullSecrets", []), pull_secrets, f"{ctx} proxy imagePullSecrets")
    expect_eq(pod.get("hostNetwork"), True, f"{ctx} proxy hostNetwork")
    expect_eq(pod.get("dnsPolicy"), "ClusterFirstWithHostNet", f"{ctx} proxy dnsPolicy")
    check_scheduling(ctx, "proxy", pod, pxv, None)
    check_pod_metadata(ctx, "proxy", ds, "proxy", values, 15020)
    if set_name == "defaults":
        expect_eq(pod.get("priorityClassName"), "system-node-critical", f"{ctx} proxy priorityClassName")
        expect_eq(pod.get("nodeSelector"), {"kubernetes.io/os": "linux"}, f"{ctx} proxy nodeSelector")
        expect(
            any(t == {"operator": "Exists"} for t in pod.get("tolerations", [])),
            f"{ctx} by default the proxy must tolerate every taint (operator Exists, no key, no effect)",
        )

    px = container(ds, "proxy")
    expect_eq(pod["containers"][0]["name"], "proxy", f"{ctx} proxy first container")
    expect_eq(px["image"], image, f"{ctx} proxy image")
    expect_eq(px["imagePullPolicy"], values["image"]["pullPolicy"], f"{ctx} proxy pullPolicy")
    expect_eq(px["command"], ["ferry-proxy"], f"{ctx} proxy command")
    expect_eq(
        px["args"],
        [
            "--node", "$(FERRY_NODE_NAME)",
            "--control-plane", f"https://{host}:15010",
            "--ca-root", "/var/run/ferry/ca/ca.pem",
            "--token-file", "/var/run/ferry/token/token",
            "--metrics-listen", "0.0.0.0:15020",
            "--hbone", "0.0.0.0:15008",
            "--capture-listen", "[::]:15001",
            "--inbound-plaintext-listen", "[::]:15006",
            "--capture-interface", pxv["captureInterface"],
            f"--kube-proxy-replacement={str(pxv['kubeProxyReplacement']).lower()}",
            "--iptables-backend", pxv["iptablesBackend"],
            "--access-log-rate", str(pxv["accessLogRate"]),
            "--worker-threads", str(pxv["workerThreads"]),
            "--cluster-domain", values["clusterDomain"],
            "--drain-timeout", f"{pxv['drainTimeoutSeconds']}s",
            "--log-format", values["logFormat"],
        ]
        + (["--istio-metrics"] if values["metrics"]["istio"] else [])
        + (["--state-dir", "/var/lib/ferry"] if pxv["stateDir"] else []),
        f"{ctx} proxy args",
    )
    expect(
        not any(a.startswith("--admin") for a in px["args"]),
        f"{ctx} the proxy's admin endpoints must stay on loopback: no --admin in {px['args']}",
    )
    chart_env = [
        {"name": "FERRY_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "RUST_LOG", "value": values["logLevel"]},
    ]
    if values["otlp"]["endpoint"]:
        chart_env.append({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": values["otlp"]["endpoint"]})
        chart_env.append({"name": "OTEL_TRACES_SAMPLER", "value": values["otlp"]["sampler"]})
        if values["otlp"]["samplerArg"]:
            chart_env.append({"name": "OTEL_TRACES_SAMPLER_ARG", "value": values["otlp"]["samplerArg"]})
        otlp = values["otlp"]
        chart_env.append({"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": otlp["protocol"]})
        chart_env.append({"name": "OTEL_EXPORTER_OTLP_COMPRESSION", "value": otlp["compression"]})
        chart_env.append({"name": "OTEL_EXPORTER_OTLP_TIMEOUT", "value": str(otlp["timeoutMillis"])})
        if otlp["headersSecret"]["name"]:
            chart_env.append({
                "name": "OTEL_EXPORTER_OTLP_HEADERS",
                "valueFrom": {"secretKeyRef": {"name": otlp["headersSecret"]["name"], "key": otlp["headersSecret"]["key"], "optional": True}},
            })
        if otlp["caSecret"]["name"]:
            chart_env.append({"name": "OTEL_EXPORTER_OTLP_CERTIFICATE", "value": "/etc/ferry/otlp-ca/ca.crt"})
        if otlp["clientCertSecret"]:
            chart_env.append({"name": "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "value": "/etc/ferry/otlp-client/tls.crt"})
            chart_env.append({"name": "OTEL_EXPORTER_OTLP_CLIENT_KEY", "value": "/etc/ferry/otlp-client/tls.key"})
        chart_env.append({"name": "FERRY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        chart_env.append({"name": "FERRY_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}})
        chart_env.append({
            "name": "OTEL_RESOURCE_ATTRIBUTES",
            "value": "k8s.pod.name=$(FERRY_POD_NAME),k8s.namespace.name=$(FERRY_POD_NAMESPACE)",
        })
    check_env(ctx, "proxy", px, chart_env, values, "proxy")
    # No declared ports: host ports would keep a surge pod off the node.
    expect_eq(px.get("ports"), None, f"{ctx} proxy ports (none: host network, maxSurge)")
    for kind, want in expected_probes(15020).items():
        expect_eq(px.get(kind), want, f"{ctx} proxy {kind}")
    sc = px["securityContext"]
    expect_eq(set(sc["capabilities"].get("add", [])), {"NET_ADMIN", "NET_RAW"}, f"{ctx} proxy added capabilities")
    expect_eq(len(sc["capabilities"]["add"]), 2, f"{ctx} proxy added capabilities count")
    expect_eq(sc["capabilities"].get("drop"), ["ALL"], f"{ctx} proxy dropped capabilities")
    expect(sc.get("privileged") in (None, False), f"{ctx} proxy must not be privileged")
    expect_eq(sc.get("allowPrivilegeEscalation"), False, f"{ctx} proxy allowPrivilegeEscalation")
    expect_eq(sc.get("readOnlyRootFilesystem"), True, f"{ctx} proxy readOnlyRootFilesystem")
    expect_eq(sc.get("runAsUser"), 0, f"{ctx} proxy runAsUser")
    expect_eq(sc.get("seccompProfile"), {"type": "RuntimeDefault"}, f"{ctx} proxy seccompProfile")
    expect(pod.get("securityContext", {}).get("sysctls") is None, f"{ctx} proxy sets no sysctls")
    expect_eq(px.get("resources"), pxv["resources"], f"{ctx} proxy resources")

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in px["volumeMounts"]}
    token = volumes[mounts["/var/run/ferry/token"]]
    expect_eq(
        token.get("projected"),
        {"sources": [{"serviceAccountToken": {"audience": values["tokenAudience"], "expirationSeconds": 3600, "path": "token"}}]},
        f"{ctx} proxy token volume",
    )
    expect_eq(volumes[mounts["/var/run/ferry/ca"]].get("configMap"), {"name": "ferry-ca-root"}, f"{ctx} proxy CA root volume")
    if pxv["stateDir"]:
        expect_eq(
            volumes[mounts["/var/lib/ferry"]].get("hostPath"),
            {"path": pxv["stateDir"], "type": "DirectoryOrCreate"},
            f"{ctx} proxy state folder",
        )
    else:
        expect("/var/lib/ferry" not in mounts, f"{ctx} no state folder when proxy.stateDir is empty")
    otlp = values["otlp"]
    if otlp["endpoint"] and otlp["caSecret"]["name"]:
        expect_eq(
            volumes[mounts["/etc/ferry/otlp-ca"]].get("secret"),
            {"secretName": otlp["caSecret"]["name"], "optional": True, "items": [{"key": otlp["caSecret"]["key"], "path": "ca.crt"}]},
            f"{ctx} proxy OTLP CA volume",
        )
    else:
        expect("/etc/ferry/otlp-ca" not in mounts, f"{ctx} no OTLP CA volume without otlp.caSecret")
    if otlp["endpoint"] and otlp["clientCertSecret"]:
        expect_eq(
            volumes[mounts["/etc/ferry/otlp-client"]].get("secret"),
            {
                "secretName": otlp["clientCertSecret"],
                "optional": True,
                "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
            },
            f"{ctx} proxy OTLP client certificate volume",
        )
    else:
        expect("/etc/ferry/otlp-client" not in mounts, f"{ctx} no OTLP client volume without otlp.clientCertSecret")
    expect_eq(pod.get("automountServiceAccountToken"), False, f"{ctx} proxy automountServiceAccountToken")

    # --- ConfigMap ------------------------------------------------------------------
    cm = one(docs, "ConfigMap", "ferry-config")
    expect_eq(
        cm["data"],
        {
            "trustDomain": values["trustDomain"],
            "clusterDomain": values["clusterDomain"],
            "meshByDefault": str(values["meshByDefault"]).lower(),
        },
        f"{ctx} ferry-config data",
    )

    check_monitoring(ctx, values, docs, namespace)
    check_test_objects(ctx, values, docs, namespace, px)


# ---------------------------------------------------------------------------
# Prometheus Operator objects (metrics.podMonitor, metrics.alerts)


def exported_metrics() -> set[str]:
    """The metric names the binaries export, read from their sources: the
    proxy's registry (prefix ferry_) and the control plane's (ferry_cp_),
    counters with _total and histograms with their series; and the process
    figures of process/src/self_metrics.rs."""
    string = r'"(?:[^"\\]|\\.)*"'
    names: set[str] = set()
    # (source of the metrics, their prefix, the source that sets the
    # prefix: Istio's metrics sit in a sub-registry of the proxy's root).
    for rel, prefix, declared_in in (
        ("proxy/src/telemetry/metrics.rs", "ferry_", "proxy/src/telemetry/metrics.rs"),
        ("proxy/src/telemetry/istio.rs", "istio_tcp_", "proxy/src/telemetry/metrics.rs"),
        ("control-plane/src/metrics.rs", "ferry_cp_", "control-plane/src/metrics.rs"),
    ):
        src = (REPO / rel).read_text().split("#[cfg(test)]")[0]
        declaring = (REPO / declared_in).read_text().split("#[cfg(test)]")[0]
        expect(
            re.search(rf'(?:Registry::with_prefix|sub_registry_with_prefix)\("{prefix[:-1]}"\)', declaring) is not None,
            f"{declared_in}: no registry with prefix {prefix!r}",
        )
        fields = dict(re.findall(r"pub (\w+): ([^\n]+),\n", src))
        registered = re.findall(rf'\.register\(\s*"(\w+)",\s*{string},\s*(?:m|metrics|self)\.(\w+)\.clone\(\)', src)
        expect(len(registered) >= (4 if "istio" in rel else 5), f"{rel}: found only {len(registered)} registered metrics")
        for name, field in registered:
            kind = fields.get(field, "")
            full = prefix + name
            if "Counter" in kind:
                names.add(full + "_total")
            elif "Histogram" in kind:
                names.update(full + s for s in ("_bucket", "_sum", "_count"))
            else:
                names.add(full)
    self_metrics = (REPO / "process/src/self_metrics.rs").read_text().split("#[cfg(test)]")[0]
    # (family, type, help, sample name, value): the sample names.
    samples = re.findall(rf'"process_\w+",\s*"(?:counter|gauge)",\s*{string},\s*"(process_\w+)"', self_metrics)
    expect(len(samples) >= 5, f"process/src/self_metrics.rs: found only {samples}")
    names.update(samples)
    names.update(re.findall(r"# TYPE (ferry_\w+) gauge", self_metrics))
    return names


PROMQL_WORDS = {"and", "or", "unless", "bool", "on", "ignoring", "group_left", "group_right", "offset", "by", "without"}


def promql_metrics(expr: str) -> set[str]:
    """The metric names a (simple) PromQL expression reads: its identifiers
    once strings, label matchers, ranges, grouping clauses, function calls
    and operators are taken out."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or m.group(0) in PROMQL_WORDS:
            continue
        # Durations such as 5m are numbers with a unit, not names.
        if m.start() > 0 and e[m.start() - 1].isdigit():
            continue
        names.add(m.group(0))
    return names


def relabel(labels: dict[str, str], relabelings: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' relabeling (replace and keep, the actions the chart uses):
    the target's labels after it, or None when it is dropped."""
    labels = dict(labels)
    for r in relabelings:
        action = r.get("action", "replace").lower()
        value = r.get("separator", ";").join(labels.get(n, "") for n in r.get("sourceLabels", []))
        m = re.fullmatch(r.get("regex", "(.*)"), value)
        if action == "keep":
            if not m:
                return None
        elif action == "replace":
            if m:
                replacement = re.sub(r"\$\{(\w+)\}|\$(\d+)", lambda g: m.group(int(g.group(1) or g.group(2))), r.get("replacement", "$1"))
                labels[r["targetLabel"]] = replacement
        else:
            raise Failure(f"relabel action {action} not simulated by the test")
    return labels


def check_monitoring(ctx: str, values: dict[str, Any], docs: list[dict[str, Any]], namespace: str) -> None:
    """The PodMonitors select exactly the proxy and control plane pods and
    scrape them on their metrics listeners; the PrometheusRule's alerts are
    well formed and read only metrics the binaries export."""
    pm_values = values["metrics"]["podMonitor"]
    monitors = find(docs, "PodMonitor")
    if not pm_values["enabled"]:
        expect_eq(monitors, [], f"{ctx} PodMonitors with metrics.podMonitor.enabled false")
    else:
        for name, kind, component in (
            ("ferry-proxy", "DaemonSet", "proxy"),
            ("ferry-control-plane", "Deployment", "control-plane"),
        ):
            pm = one(docs, "PodMonitor", name)
            what = f"{ctx} PodMonitor/{name}"
            workload = one(docs, kind, name)
            pod_labels = workload["spec"]["template"]["metadata"]["labels"]
            expect_eq(pm["apiVersion"], "monitoring.coreos.com/v1", f"{what} apiVersion")
            expect_eq(
                pm["metadata"]["labels"],
                {**pm_values["labels"], **COMMON_LABELS, "app.kubernetes.io/component": component},
                f"{what} labels (the user's, the chart's win)",
            )
            spec = pm["spec"]
            expect_eq(sorted(spec), ["namespaceSelector", "podMetricsEndpoints", "selector"], f"{what} spec fields")
            expect_eq(spec["namespaceSelector"], {"matchNames": [namespace]}, f"{what} namespaceSelector")
            expect_eq(spec["selector"], {"matchLabels": workload["spec"]["selector"]["matchLabels"]}, f"{what} selector (the {kind}'s)")
            expect(
                all(pod_labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()),
                f"{what} selector does not select the {kind}'s pods {pod_labels}",
            )
            (ep,) = spec["podMetricsEndpoints"]
            expect_eq((ep.get("path"), ep.get("interval")), ("/metrics", pm_values["interval"]), f"{what} path and interval")
            c = pod_spec(workload)["containers"][0]
            listen = c["args"][c["args"].index("--metrics-listen") + 1]
            port = int(listen.rsplit(":", 1)[1])
            if component == "control-plane":
                expect_eq(port, 15014, f"{what} control plane --metrics-listen port")
                expect_eq(sorted(ep), ["interval", "path", "port"], f"{what} endpoint fields")
                named = {p["name"]: p["containerPort"] for p in c["ports"]}
                expect_eq(named.get(ep["port"]), port, f"{what} port {ep['port']!r} (the container's metrics port)")
            else:
                expect_eq(port, 15020, f"{what} proxy --metrics-listen port")
                # No declared container port to select (port, portNumber and
                # targetPort all keep only targets with a matching one): the
                # address comes from the pod IP by relabeling.
                expect_eq(sorted(ep), ["interval", "path", "relabelings"], f"{what} endpoint fields (no port selector)")
                for pod_ip, address in (("10.1.2.3", "10.1.2.3:15020"), ("fd00:10::3", "[fd00:10::3]:15020")):
                    target = {"__address__": pod_ip, "__meta_kubernetes_pod_ip": pod_ip, "__meta_kubernetes_pod_container_name": c["name"]}
                    got = relabel(target, ep["relabelings"])
                    expect_eq((got or {}).get("__address__"), address, f"{what} scrape address of a proxy with pod IP {pod_ip}")
                other = {"__address__": "10.1.2.3", "__meta_kubernetes_pod_ip": "10.1.2.3", "__meta_kubernetes_pod_container_name": "debug"}
                expect(relabel(other, ep["relabelings"]) is None, f"{what} must scrape the proxy container only")

    alert_values = values["metrics"]["alerts"]
    rules_docs = find(docs, "PrometheusRule")
    if not alert_values["enabled"]:
        expect_eq(rules_docs, [], f"{ctx} PrometheusRules with metrics.alerts.enabled false")
        return
    pr = one(docs, "PrometheusRule", "ferry")
    what = f"{ctx} PrometheusRule/ferry"
    expect_eq(pr["apiVersion"], "monitoring.coreos.com/v1", f"{what} apiVersion")
    expect_eq(
        pr["metadata"]["labels"],
        {**alert_values["labels"], **COMMON_LABELS, "app.kubernetes.io/component": "alerts"},
        f"{what} labels (the user's, the chart's win)",
    )
    # `up` is Prometheus' own, per target.
    known = exported_metrics() | {"up"}
    proxy_sources = "\n".join(p.read_text() for p in sorted((REPO / "proxy" / "src").rglob("*.rs")))
    alerts = {}
    problems = []
    for group in pr["spec"]["groups"]:
        expect(set(group) == {"name", "rules"} and group["rules"], f"{what} group {group.get('name')}: name and rules")
        for r in group["rules"]:
            name = r.get("alert", "<no alert name>")
            if sorted(r) != ["alert", "annotations", "expr", "for", "labels"]:
                problems.append(f"{name}: fields {sorted(r)}, expected alert, annotations, expr, for, labels")
                continue
            expect(name not in alerts, f"{what}: alert {name} twice")
            alerts[name] = r
            expr = r["expr"]
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{name}: empty expr")
                continue
            if not re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", str(r["for"])):
                problems.append(f"{name}: for {r['for']!r} is no Prometheus duration")
            if r["labels"].get("severity") not in ("critical", "warning", "info"):
                problems.append(f"{name}: severity {r['labels'].get('severity')!r}")
            if not (r["annotations"].get("summary") and r["annotations"].get("description")):
                problems.append(f"{name}: needs annotations summary and description")
            if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                problems.append(f"{name}: unbalanced brackets in {expr!r}")
            read = promql_metrics(expr)
            if not read:
                problems.append(f"{name}: reads no metric: {expr!r}")
            unknown = sorted(read - known)
            if unknown:
                problems.append(f"{name}: {unknown} not exported by the binaries (from the sources): {expr!r}")
            for value in re.findall(r'reason!?=~?"([^"]*)"', expr):
                if f'"{value}"' not in proxy_sources:
                    problems.append(f"{name}: reason {value!r} is not one the proxy reports")
    expect(not problems, f"{what}:\n    " + "\n    ".join(problems))
    expect_eq(
        sorted(alerts),
        sorted([
            "FerryCertificateExpiringSoon",
            "FerryClientAddressFallbacks",
            "FerryControlPlaneNacks",
            "FerryDaemonDown",
            "FerryMTLSFailures",
            "FerryPolicyDenialSpike",
            "FerryNoProxyConnected",
            "FerryPodsOutsideCaptureInterface",
            "FerryProxyConfigStale",
            "FerryProxyNotConfigured",
        ]),
        f"{what} alerts",
    )
    margin = values["controlPlane"]["workloadCertTTL"] // 4
    expect(
        alerts["FerryCertificateExpiringSoon"]["expr"].endswith(f"< {margin}"),
        f"{what} certificate alert threshold: a quarter of workloadCertTTL ({margin}s): {alerts['FerryCertificateExpiringSoon']['expr']!r}",
    )
    check_alert_values(what, pr["spec"]["groups"], margin)


# ---------------------------------------------------------------------------
# Alert expressions evaluated by Prometheus (promtool test rules)


def alert_cases(margin: int) -> dict[str, dict[str, Any]]:
    """For each alert: synthetic series (promtool's expanding notation, one
    sample a minute), and what its expression must give at a time: the
    series that fire, with their labels and values, or none for the series
    that must not fire."""
    proxy = 'instance="10.0.0.1:15020"'
    return {
        "FerryNoProxyConnected": {
            "series": [
                ('ferry_cp_connected_proxies{instance="cp-0:15014"}', "0x20"),
                ('ferry_cp_connected_proxies{instance="cp-1:15014"}', "0x20"),
            ],
            "at": "10m",
            "expect": [({}, 0)],
            "quiet_series": [
                ('ferry_cp_connected_proxies{instance="cp-0:15014"}', "0x20"),
                ('ferry_cp_connected_proxies{instance="cp-1:15014"}', "3x20"),
            ],
        },
        "FerryProxyNotConfigured": {
            # 60 refusals a minute: one a second.
            "series": [(f'ferry_connection_failures_total{{{proxy},reporter="source",reason="not_configured"}}', "0+60x20")],
            "at": "10m",
            "expect": [({"instance": "10.0.0.1:15020"}, 1)],
            "quiet_series": [(f'ferry_connection_failures_total{{{proxy},reporter="source",reason="no_endpoints"}}', "0+60x20")],
        },
        "FerryMTLSFailures": {
            "series": [(f'ferry_connection_failures_total{{{proxy},reporter="source",reason="tls_failure"}}', "0+30x20")],
            "at": "10m",
            "expect": [({"instance": "10.0.0.1:15020"}, 0.5)],
            "quiet_series": [(f'ferry_connection_failures_total{{{proxy},reporter="source",reason="tls_failure"}}', "5x20")],
        },
        "FerryCertificateExpiringSoon": {
            # Expires at 3600 s; at 10 m (600 s) it has 3000 s left.
            "series": [(f'ferry_certificate_expiry_timestamp_seconds{{{proxy},identity="spiffe://cluster.local/ns/a/sa/b"}}', "3600x20")],
            "at": "10m",
            "expect": [({"instance": "10.0.0.1:15020", "identity": "spiffe://cluster.local/ns/a/sa/b"}, 3000)] if 3000 < margin else [],
            "quiet_series": [(f'ferry_certificate_expiry_timestamp_seconds{{{proxy},identity="spiffe://cluster.local/ns/a/sa/b"}}', f"{margin + 3600}x20")],
        },
        "FerryControlPlaneNacks": {
            "series": [('ferry_cp_nacks_total{instance="cp-0:15014"}', "0+6x20")],
            "at": "15m",
            "expect": [({}, 0.1)],
            "quiet_series": [('ferry_cp_nacks_total{instance="cp-0:15014"}', "2x20")],
        },
        "FerryPodsOutsideCaptureInterface": {
            "series": [(f"ferry_capture_pods_outside_interface{{{proxy}}}", "2x20")],
            "at": "10m",
            "expect": [({"instance": "10.0.0.1:15020"}, 2)],
            "quiet_series": [(f"ferry_capture_pods_outside_interface{{{proxy}}}", "0x20")],
        },
        "FerryClientAddressFallbacks": {
            "series": [
                (f'ferry_client_address_fallbacks_total{{{proxy},reason="not_permitted"}}', "0+6x20"),
                (f'ferry_client_address_fallbacks_total{{{proxy},reason="same_link"}}', "0+600x20"),
            ],
            "at": "15m",
            "expect": [({"instance": "10.0.0.1:15020", "reason": "not_permitted"}, 0.1)],
            "quiet_series": [(f'ferry_client_address_fallbacks_total{{{proxy},reason="same_link"}}', "0+600x20")],
        },
        "FerryProxyConfigStale": {
            "series": [
                (f"ferry_control_plane_connected{{{proxy}}}", "0x20"),
                ('ferry_control_plane_connected{instance="10.0.0.2:15020"}', "1x20"),
            ],
            "at": "10m",
            "expect": [({"instance": "10.0.0.1:15020"}, 0)],
            "quiet_series": [(f"ferry_control_plane_connected{{{proxy}}}", "1x20")],
        },
        "FerryDaemonDown": {
            # A proxy's scrapes fail; another proxy and other jobs' targets
            # do not matter; a replaced control plane pod is a new target
            # (its old one is gone, not down).
            "series": [
                (f'up{{{proxy},job="ferry-system/ferry-proxy"}}', "1x5 0x15"),
                ('up{instance="10.0.0.2:15020",job="ferry-system/ferry-proxy"}', "1x20"),
                ('up{instance="10.1.0.9:8080",job="other-app"}', "0x20"),
            ],
            "at": "10m",
            "expect": [({"__name__": "up", "instance": "10.0.0.1:15020", "job": "ferry-system/ferry-proxy"}, 0)],
            "quiet_series": [
                ('up{instance="10.0.0.2:15020",job="ferry-system/ferry-proxy"}', "1x20"),
                ('up{instance="10.2.0.7:15014",job="ferry-system/ferry-control-plane"}', "1x5 _x15"),
                ('up{instance="10.2.0.8:15014",job="ferry-system/ferry-control-plane"}', "_x5 1x15"),
                ('up{instance="10.1.0.9:8080",job="other-app"}', "0x20"),
            ],
        },
        "FerryPolicyDenialSpike": {
            # 3 a second to shop/db, counted once (at the denying proxy);
            # a trickle to shop/web stays quiet.
            "series": [
                (f'ferry_connection_failures_total{{{proxy},reporter="destination",reason="policy_denied",destination_namespace="shop",destination_workload="db"}}', "0+180x20"),
                (f'ferry_connection_failures_total{{{proxy},reporter="destination",reason="policy_denied",destination_namespace="shop",destination_workload="web"}}', "0+6x20"),
            ],
            "at": "10m",
            "expect": [({"destination_namespace": "shop", "destination_workload": "db"}, 3)],
            "quiet_series": [
                (f'ferry_connection_failures_total{{{proxy},reporter="destination",reason="policy_denied",destination_namespace="shop",destination_workload="web"}}', "0+6x20"),
            ],
        },
    }


def check_alert_values(what: str, groups: list[dict[str, Any]], margin: int) -> None:
    """Every alert's expression, evaluated by promtool on synthetic series:
    what it must return when the condition holds (labels and value), and
    nothing when it does not."""
    promtool = shutil.which("promtool")
    if promtool is None:
        expect(os.environ.get("FERRY_E2E") != "required", "promtool (Debian package prometheus) is required")
        print("chart: promtool not found, alert expressions not evaluated")
        return
    alerts = {r["alert"]: r for g in groups for r in g["rules"]}
    cases = alert_cases(margin)
    expect_eq(sorted(cases), sorted(alerts), f"{what}: an evaluation case per alert")
    tests = []
    for name, case in cases.items():
        expr = alerts[name]["expr"]
        for series, expected in ((case["series"], case["expect"]), (case["quiet_series"], [])):
            tests.append({
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": [{
                    "expr": expr,
                    "eval_time": case["at"],
                    "exp_samples": [{"labels": "{" + ",".join(f'{k}="{v}"' for k, v in sorted(l.items())) + "}", "value": value} for l, value in expected],
                }],
            })
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": groups}))
        test = Path(tmp) / "test.yaml"
        test.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}))
        check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
        expect(check.returncode == 0, f"{what}: promtool check rules:\n{check.stdout}{check.stderr}")
        run = subprocess.run([promtool, "test", "rules", str(test)], capture_output=True, text=True)
        expect(run.returncode == 0, f"{what}: promtool test rules ({len(tests)} evaluations):\n{run.stdout}{run.stderr}")


def check_test_objects(ctx: str, values: dict[str, Any], docs: list[dict[str, Any]], namespace: str, proxy: dict[str, Any]) -> None:
    """The `helm test` objects: hooks in the right order, the server and the
    client in the mesh on different nodes, and the client's settings in
    step with the server, its Service and the proxies."""
    hooks = {}
    for kind, name in [
        ("ServiceAccount", "ferry-test-server"),
        ("ServiceAccount", "ferry-test-client"),
        ("Service", "ferry-test-server"),
        ("Deployment", "ferry-test-server"),
        ("Pod", "ferry-test-mesh-traffic"),
    ]:
        obj = one(docs, kind, name)
        ann = obj["metadata"].get("annotations", {})
        expect_eq(ann.get("helm.sh/hook"), "test", f"{ctx} {kind}/{name} hook")
        policies = set(ann.get("helm.sh/hook-delete-policy", "").split(","))
        expect_eq(policies, {"before-hook-creation", "hook-succeeded"}, f"{ctx} {kind}/{name} hook-delete-policy (reruns replace it)")
        hooks[(kind, name)] = int(ann.get("helm.sh/hook-weight", "0"))
    client_weight = hooks.pop(("Pod", "ferry-test-mesh-traffic"))
    for (kind, name), weight in hooks.items():
        expect(weight < client_weight, f"{ctx} {kind}/{name} (hook weight {weight}) must be created before the client pod (weight {client_weight})")
    for name in ("ferry-test-server", "ferry-test-client"):
        expect_eq(one(docs, "ServiceAccount", name).get("automountServiceAccountToken"), False, f"{ctx} ServiceAccount/{name} automount")

    server = one(docs, "Deployment", "ferry-test-server")
    client = one(docs, "Pod", "ferry-test-mesh-traffic")
    expect_eq(client["__source"], "ferry/templates/tests/mesh-traffic.yaml", f"{ctx} test client template")
    server_pod = pod_spec(server)
    client_pod = pod_spec(client)
    server_labels = server["spec"]["template"]["metadata"]["labels"]
    client_labels = client["metadata"]["labels"]
    expect_eq(server["spec"]["replicas"], 1, f"{ctx} test server replicas")
    for k, v in server["spec"]["selector"]["matchLabels"].items():
        expect_eq(server_labels.get(k), v, f"{ctx} test server pod label {k} (selector)")
    expect_eq(client["spec"].get("restartPolicy"), "Never", f"{ctx} test client restartPolicy")

    for what, pod, labels in (("server", server_pod, server_labels), ("client", client_pod, client_labels)):
        expect_eq(labels.get("ferry.dev/mesh"), "enabled", f"{ctx} test {what} pod must be in the mesh (label ferry.dev/mesh)")
        expect_eq(pod.get("imagePullSecrets", []), values["imagePullSecrets"], f"{ctx} test {what} imagePullSecrets")
        expect_eq(pod.get("nodeSelector", {}), values["proxy"]["nodeSelector"], f"{ctx} test {what} nodeSelector (where proxies run)")
        expect_eq(pod.get("automountServiceAccountToken"), False, f"{ctx} test {what} automountServiceAccountToken")
        expect(not pod.get("hostNetwork"), f"{ctx} test {what} must not use the host network (never in the mesh)")
        expect_eq(pod.get("securityContext"), {"runAsUser": 65534, "runAsGroup": 65534}, f"{ctx} test {what} pod securityContext")
        expect_eq(len(pod["containers"]), 1, f"{ctx} test {what} containers")
        expect_eq(pod["containers"][0]["securityContext"], RESTRICTED, f"{ctx} test {what} securityContext")

    # On two nodes: each pod's required anti-affinity selects the other.
    def anti_affinity_peers(pod: dict[str, Any], what: str) -> dict[str, str]:
        terms = pod.get("affinity", {}).get("podAntiAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", [])
        expect_eq(len(terms), 1, f"{ctx} test {what} required anti-affinity terms")
        expect_eq(terms[0]["topologyKey"], "kubernetes.io/hostname", f"{ctx} test {what} anti-affinity topologyKey")
        return terms[0]["labelSelector"]["matchLabels"]

    for what, pod, other, other_labels in (
        ("client", client_pod, "server", server_labels),
        ("server", server_pod, "client", client_labels),
    ):
        selector = anti_affinity_peers(pod, what)
        expect(
            all(other_labels.get(k) == v for k, v in selector.items()),
            f"{ctx} test {what} anti-affinity {selector} does not select the {other} pod {other_labels}",
        )
        expect(
            not all((client_labels if what == "client" else server_labels).get(k) == v for k, v in selector.items()),
            f"{ctx} test {what} anti-affinity {selector} selects the {what} pod itself",
        )

    # The client's settings agree with the server, its Service and the proxies.
    sc = container(server, "server")
    cc = container(client, "check")
    expect_eq(sc["image"], values["test"]["serverImage"], f"{ctx} test server image")
    expect_eq(cc["image"], values["test"]["image"], f"{ctx} test client image")
    senv, cenv = env_values(sc), env_values(cc)
    expect_eq(env_of(cc).get("HOST_IP", {}).get("valueFrom"), {"fieldRef": {"fieldPath": "status.hostIP"}}, f"{ctx} test client HOST_IP")
    expect_eq(env_of(sc).get("HOST_IP", {}).get("valueFrom"), {"fieldRef": {"fieldPath": "status.hostIP"}}, f"{ctx} test server HOST_IP")
    expect_eq(cenv.get("EXPECTED_BODY"), senv.get("BODY"), f"{ctx} the body the client expects is the server's")
    expect_eq(
        {m["mountPath"] for m in sc.get("volumeMounts", [])},
        {senv.get("DOCROOT")},
        f"{ctx} test server DOCROOT is its writable volume",
    )
    svc = one(docs, "Service", "ferry-test-server")
    expect(
        all(server_labels.get(k) == v for k, v in svc["spec"]["selector"].items()),
        f"{ctx} Service/ferry-test-server selector {svc['spec']['selector']} does not select the server pod",
    )
    (svc_port,) = svc["spec"]["ports"]
    server_ports = {p["name"]: p["containerPort"] for p in sc["ports"]}
    expect_eq(server_ports.get(svc_port["targetPort"]), 8080, f"{ctx} test Service targetPort (httpd -p 8080)")
    expect("-p 8080" in sc["command"][-1], f"{ctx} test server must listen on 8080")
    expect_eq(
        cenv.get("SERVER_URL"),
        f"http://ferry-test-server.{namespace}.svc.{values['clusterDomain']}:{svc_port['port']}/",
        f"{ctx} test client SERVER_URL",
    )
    expect_eq(
        cenv.get("CONTROL_PLANE_METRICS_URL"),
        f"http://ferry-control-plane.{namespace}.svc:15014/metrics",
        f"{ctx} test client CONTROL_PLANE_METRICS_URL",
    )
    proxy_metrics = 15020
    expect_eq(cenv.get("PROXY_METRICS_PORT"), str(proxy_metrics), f"{ctx} test client PROXY_METRICS_PORT")
    expect_eq(cenv.get("REQUESTS"), "5", f"{ctx} test client REQUESTS")
    # How the proxies name workloads: app.kubernetes.io/name, else app,
    # else the pod name (core/src/state.rs, PeerLabels).
    expect_eq(cenv.get("SERVER_WORKLOAD"), server_labels.get("app.kubernetes.io/name"), f"{ctx} test client SERVER_WORKLOAD")
    expect_eq(cenv.get("SERVER_NAMESPACE"), namespace, f"{ctx} test client SERVER_NAMESPACE")
    trust = values["trustDomain"]
    expect_eq(
        cenv.get("SERVER_PRINCIPAL"),
        f"spiffe://{trust}/ns/{namespace}/sa/{server_pod['serviceAccountName']}",
        f"{ctx} test client SERVER_PRINCIPAL",
    )
    expect_eq(
        cenv.get("CLIENT_PRINCIPAL"),
        f"spiffe://{trust}/ns/{namespace}/sa/{client_pod['serviceAccountName']}",
        f"{ctx} test client CLIENT_PRINCIPAL",
    )
    expect_eq(
        {server_pod["serviceAccountName"], client_pod["serviceAccountName"]},
        {"ferry-test-server", "ferry-test-client"},
        f"{ctx} test pods' service accounts (one identity each)",
    )


# ---------------------------------------------------------------------------
# The `helm test` scripts, run with stand-ins


def shells() -> dict[str, tuple[list[str], list[str]]]:
    """The shells to run the test scripts with: name -> (sh command, tools
    to link into the stand-in bin folder, with nothing else on PATH; empty:
    the system's PATH too). dash+mawk always; busybox (sh, awk, sed, grep,
    ...: what the test images run) when it is installed."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    sh = shutil.which("sh")
    expect(sh is not None, "no sh to run the test scripts")
    out["sh"] = ([sh], [])
    busybox = shutil.which("busybox")
    if busybox:
        out["busybox"] = ([busybox, "sh"], ["sh", "awk", "sed", "grep", "sort", "tr", "cat", "printf", "echo", "mkdir"])
    return out


def run_script(
    shell: tuple[list[str], list[str]],
    script: str,
    env: dict[str, str],
    stubs: dict[str, str],
    tmpd: Path,
) -> subprocess.CompletedProcess[str]:
    """Runs SCRIPT under SHELL with the stand-in commands STUBS (name ->
    sh script text) first on PATH."""
    command, applets = shell
    bindir = tmpd / "bin"
    bindir.mkdir()
    for name, text in stubs.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    path = str(bindir)
    if applets:
        for applet in applets:
            if applet not in stubs:
                (bindir / applet).symlink_to(command[0])
    else:
        path += ":" + os.environ.get("PATH", "/usr/bin:/bin")
    return subprocess.run(
        command + ["-c", script],
        env={**env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )


def curl_stub(tmpd: Path, replies: dict[str, list[str | None]]) -> str:
    """A curl stand-in: checks it is called as `curl -fsS ... URL`, serves
    the replies of that URL in turn (the last one again once they run out;
    None: fails as curl does when it cannot connect) and logs each URL."""
    cases = []
    for k, (url, answers) in enumerate(replies.items()):
        for i, answer in enumerate(answers):
            (tmpd / f"r{k}.{i}").write_text(answer if answer is not None else "")
            if answer is None:
                (tmpd / f"r{k}.{i}.fail").write_text("")
        (tmpd / f"last{k}").write_text(str(len(answers) - 1))
        quoted = url.replace("'", "'\\''")
        cases.append(f"  '{quoted}') k={k} ;;")
    return f"""#!/bin/sh
for last; do :; done
case " $* " in *" -fsS "*) ;; *) echo "curl stand-in: expected -fsS (fail on HTTP errors): $*" >&2; exit 4 ;; esac
case "$last" in
{chr(10).join(cases)}
  *) echo "curl stand-in: unexpected URL $last" >&2; exit 3 ;;
esac
echo "$last" >> {tmpd}/calls
n=$(cat {tmpd}/n$k 2>/dev/null || echo 0); echo $((n + 1)) > {tmpd}/n$k
i=$n; [ -e {tmpd}/r$k.$i ] || i=$(cat {tmpd}/last$k)
[ -e {tmpd}/r$k.$i.fail ] && {{ echo "curl: (7) Failed to connect to $last" >&2; exit 7; }}
cat {tmpd}/r$k.$i
"""


# prometheus_client's label order for connection metrics (ConnectionLabels).
CONNECTION_LABELS = [
    "reporter", "source_workload", "source_namespace", "source_principal",
    "destination_workload", "destination_namespace", "destination_principal",
    "destination_service", "mode",
]


class FakeProxyMetrics:
    """Metrics pages of the two proxies, as ferry-proxy writes them
    (OpenMetrics text; prometheus_client's Counter gets _total), with decoys
    that the script must not count: other metrics with the same labels, a
    workload whose name starts with the server's, another namespace, the
    other reporter."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        ns = env["SERVER_NAMESPACE"]
        self.base = {
            "source_workload": "ferry",
            "source_namespace": ns,
            "source_principal": env["CLIENT_PRINCIPAL"],
            "destination_workload": env["SERVER_WORKLOAD"],
            "destination_namespace": ns,
            "destination_principal": env["SERVER_PRINCIPAL"],
            "destination_service": f"ferry-test-server.{ns}.svc.cluster.local",
        }

    @staticmethod
    def line(metric: str, value: float, labels: dict[str, str]) -> str:
        body = ",".join(f'{k}="{labels[k]}"' for k in CONNECTION_LABELS)
        return f"{metric}{{{body}}} {value}"

    def page(self, reporter: str, counts: dict[str, int], **overrides: str) -> str:
        """A page whose opened counter towards the server is COUNTS[mode]
        for each mode, with label OVERRIDES."""
        lines = [
            "# HELP ferry_connections_opened_total Connections opened.",
            "# TYPE ferry_connections_opened_total counter",
        ]
        for mode, value in counts.items():
            labels = {**self.base, "reporter": reporter, "mode": mode, **overrides}
            if reporter == "destination":
                labels["destination_service"] = ""
            lines.append(self.line("ferry_connections_opened_total", value, labels))
        other = "destination" if reporter == "source" else "source"
        decoy = {**self.base, "reporter": reporter, "mode": "hbone"}
        lines += [
            self.line("ferry_connections_opened_total", 50, {**decoy, "destination_workload": self.env["SERVER_WORKLOAD"] + "-old"}),
            self.line("ferry_connections_opened_total", 50, {**decoy, "destination_namespace": "default"}),
            self.line("ferry_connections_opened_total", 50, {**decoy, "reporter": other}),
            "# HELP ferry_connections_closed_total Connections closed.",
            "# TYPE ferry_connections_closed_total counter",
            self.line("ferry_connections_closed_total", 99, decoy),
            "# HELP ferry_open_connections Open connections.",
            "# TYPE ferry_open_connections gauge",
            f'ferry_open_connections{{reporter="{reporter}",mode="hbone"}} 1',
            "# EOF",
        ]
        return "\n".join(lines) + "\n"

    def client(self, hbone: int = 0, **kw: Any) -> str:
        counts = {"hbone": hbone, **{m: kw.pop(m) for m in ("direct", "passthrough", "plaintext") if m in kw}}
        return self.page("source", counts, **kw)

    def server(self, hbone: int = 0, **kw: str) -> str:
        return self.page("destination", {"hbone": hbone}, **kw)


def check_test_scripts(docs: list[dict[str, Any]], counts: dict[str, int]) -> None:
    """Runs the server's and the client's scripts with stand-ins: the client
    passes with metrics that show the calls over HBONE with the right
    identities, and fails, for the right reason, otherwise."""
    server = container(one(docs, "Deployment", "ferry-test-server"), "server")
    client = container(one(docs, "Pod", "ferry-test-mesh-traffic"), "check")
    for c in (server, client):
        expect_eq(c["command"][:2], ["/bin/sh", "-c"], f"test {c['name']} command")
    failures: list[str] = []
    runs = 0

    # --- the server: writes the body and its node address, then execs httpd.
    senv = env_values(server)
    for shell_name, shell in shells().items():
        with tempfile.TemporaryDirectory() as tmp:
            tmpd = Path(tmp)
            docroot = tmpd / "www"
            docroot.mkdir()
            httpd = f'#!/bin/sh\necho "$@" > {tmpd}/httpd-args\n'
            proc = run_script(
                shell, server["command"][2], {**senv, "DOCROOT": str(docroot), "HOST_IP": "10.0.0.2"}, {"httpd": httpd}, tmpd
            )
            runs += 1
            problems = []
            if proc.returncode != 0:
                problems.append(f"exit {proc.returncode}: {proc.stderr[-300:]!r}")
            else:
                if (docroot / "index.html").read_text() != senv["BODY"] + "\n":
                    problems.append(f"index.html holds {(docroot / 'index.html').read_text()!r}")
                if (docroot / "node").read_text() != "10.0.0.2\n":
                    problems.append(f"node holds {(docroot / 'node').read_text()!r}")
                args = (tmpd / "httpd-args").read_text().split()
                if args[:1] != ["-f"] or "-p" not in args or args[args.index("-p") + 1] != "8080" or args[args.index("-h") + 1] != str(docroot):
                    problems.append(f"httpd arguments {args}")
            if problems:
                failures.append(f"[{shell_name}] server script: " + "; ".join(problems))

    # --- the client.
    cenv = env_values(client)
    client_ip, server_ip = "10.0.0.1", "10.0.0.2"
    fake = FakeProxyMetrics(cenv)
    body = cenv["EXPECTED_BODY"] + "\n"
    requests = int(cenv["REQUESTS"])
    port = cenv["PROXY_METRICS_PORT"]
    url = cenv["SERVER_URL"]
    cp_url = cenv["CONTROL_PLANE_METRICS_URL"]

    def cp_metrics(value: str) -> str:
        return (
            "# HELP ferry_cp_connected_proxies Proxies with an open config stream.\n"
            "# TYPE ferry_cp_connected_proxies gauge\n"
            f"ferry_cp_connected_proxies {value}\n"
            "ferry_cp_connected_proxies_total_typo 9\n"
            "# EOF\n"
        )

    def replies(host_ip: str = client_ip, node_ip: str = server_ip, **over: list[str | None]) -> tuple[str, dict[str, list[str | None]]]:
        def metrics_url(ip: str) -> str:
            return f"http://[{ip}]:{port}/metrics" if ":" in ip else f"http://{ip}:{port}/metrics"

        out: dict[str, list[str | None]] = {
            cp_url: over.pop("cp", [cp_metrics("0"), cp_metrics("2")]),
            # Not up at first; then the body, always.
            url: over.pop("server", [None, None, body]),
            url + "node": over.pop("node", [node_ip + "\n"]),
            metrics_url(host_ip): over.pop("client", [fake.client(0), fake.client(requests)]),
            metrics_url(node_ip): over.pop("server_proxy", [fake.server(0), fake.server(requests)]),
        }
        expect(not over, f"unknown reply override {list(over)}")
        return host_ip, out

    wrong = f"spiffe://{cenv['SERVER_NAMESPACE']}.example/ns/{cenv['SERVER_NAMESPACE']}/sa/default"
    # name -> (HOST_IP and the replies per URL, expected exit status, what
    # the output must say: the reason it passes or fails)
    cases: dict[str, tuple[tuple[str, dict[str, list[str | None]]], int, str]] = {
        "calls over HBONE, counted by both proxies": (replies(), 0, "ok: the client's proxy (node 10.0.0.1) sent 5 connections over HBONE"),
        "counters already high from earlier runs": (
            replies(client=[fake.client(10), fake.client(15)], server_proxy=[fake.server(7), fake.server(12)]), 0, "ok: the client's proxy"),
        "counters catch up on a later scrape": (
            replies(client=[fake.client(0), fake.client(3), fake.client(5)]), 0, "ok: the client's proxy"),
        "IPv6 node addresses": (replies(host_ip="fd00::1", node_ip="fd00::2"), 0, "ok: the client's proxy (node fd00::1)"),
        "no proxy connected to the control plane": (replies(cp=[cp_metrics("0")]), 1, "no control plane replica reports a connected proxy"),
        "control plane unreachable": (replies(cp=[None]), 1, "no control plane replica reports a connected proxy"),
        "server never answers": (replies(server=[None]), 1, "the server did not answer"),
        "HTTP body mismatch": (replies(server=["It works!\n"]), 1, "answered 'It works!'"),
        "HTTP body mismatch on the first answer only": (
            replies(server=[None, "It works!\n", body]), 1, f"FAIL: {url} answered 'It works!'"),
        "HTTP body mismatch on the third call": (
            replies(server=[None, body, body, body, "It works!\n", body]), 1, "request 3 of 5: "),
        "call fails midway": (replies(server=[body, body, None, body]), 1, "request 2 of 5 to"),
        "both pods on one node": (replies(node=[client_ip + "\n"]), 1, "both run on node 10.0.0.1"),
        "proxy metrics unreachable": (replies(client=[None]), 1, "cannot read the proxy metrics at http://10.0.0.1:"),
        "no hbone series: mode=direct": (
            replies(client=[fake.client(0), fake.client(0, direct=5)]), 1, 'mode="direct": the client and the server are on one node'),
        "no series towards the server at all": (
            replies(client=[fake.client(0), fake.client(0)]), 1, "counted no connection to ferry-test-server"),
        "plaintext towards the server": (
            replies(client=[fake.client(0), fake.client(0, passthrough=5)]), 1, "in plaintext (mode passthrough/plaintext)"),
        "only 4 over HBONE": (replies(client=[fake.client(0), fake.client(4)]), 1, "counted only 4 connections"),
        "an earlier run's counts do not count": (
            replies(client=[fake.client(10), fake.client(14)]), 1, "counted only 4 connections"),
        "wrong destination principal": (
            replies(client=[fake.client(0), fake.client(5, destination_principal=wrong)]), 1, f"destination_principal {wrong} instead of"),
        "server proxy: wrong source principal": (
            replies(server_proxy=[fake.server(0), fake.server(5, source_principal=wrong)]), 1, f"proved source_principal {wrong} instead of"),
        "server proxy: only 3": (
            replies(server_proxy=[fake.server(0), fake.server(3)]), 1, "counted only 3 HBONE connections"),
        "server proxy: nothing": (
            replies(server_proxy=[fake.server(0), fake.server(0)]), 1, "counted no HBONE connection to ferry-test-server"),
    }

    for shell_name, shell in shells().items():
        for name, ((host_ip, answers), want, says) in cases.items():
            with tempfile.TemporaryDirectory() as tmp:
                tmpd = Path(tmp)
                env = {**cenv, "HOST_IP": host_ip}
                stubs = {"curl": curl_stub(tmpd, answers), "sleep": "#!/bin/sh\nexit 0\n"}
                proc = run_script(shell, client["command"][2], env, stubs, tmpd)
                runs += 1
                output = proc.stdout + proc.stderr
                calls = (tmpd / "calls").read_text().splitlines() if (tmpd / "calls").exists() else []
                problem = None
                if proc.returncode != want:
                    problem = f"exit {proc.returncode}, expected {want}"
                elif says not in output:
                    problem = f"the output does not say {says!r}"
                elif want == 0 and calls.count(url) != requests + 3:
                    problem = f"{calls.count(url)} calls to the server, expected 2 refused, 1 answered and {requests} counted"
                elif "stand-in" in proc.stderr:
                    problem = "called curl wrongly"
                if problem:
                    failures.append(
                        f"[{shell_name}] {name}: {problem}; stdout: {proc.stdout[-400:]!r} stderr: {proc.stderr[-600:]!r}"
                    )
    expect(not failures, "helm test scripts:\n    " + "\n    ".join(failures))
    counts["test script cases"] = len(cases) + 1
    counts["test script runs"] = runs
    counts["test script shells"] = len(shells())


def check_render_commands(counts: dict[str, int]) -> None:
    """tests/helm/render_commands.py prints the containers' command, args
    and env as JSON, takes --set and --values, and refuses invalid values."""
    tool = Path(__file__).resolve().parent / "render_commands.py"
    env = {**os.environ, "FERRY_CHART": str(CHART)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True, timeout=120, env=env)

    proc = run()
    expect(proc.returncode == 0, f"render_commands.py: exit {proc.returncode}: {proc.stderr[-500:]}")
    out = json.loads(proc.stdout)
    expect_eq(sorted(out), ["controlPlane", "proxy"], "render_commands.py top-level keys")
    for key in out:
        expect_eq(
            sorted(out[key]),
            ["args", "capabilities", "command", "env", "hostNetwork", "mounts", "readOnlyRootFilesystem", "runAsGroup", "runAsUser"],
            f"render_commands.py {key} keys",
        )
        for e in out[key]["env"]:
            expect(
                set(e) in ({"name", "value"}, {"name", "fieldRef"}, {"name", "valueFrom"}),
                f"render_commands.py {key} env entry {e}",
            )
    expect_eq(out["proxy"]["command"], ["ferry-proxy"], "render_commands.py proxy command")
    expect_eq(out["controlPlane"]["command"], ["ferry-control-plane"], "render_commands.py controlPlane command")
    expect("--kube-proxy-replacement=false" in out["proxy"]["args"], "render_commands.py: default --kube-proxy-replacement=false")
    expect({"name": "FERRY_NODE_NAME", "fieldRef": "spec.nodeName"} in out["proxy"]["env"], "render_commands.py proxy FERRY_NODE_NAME")
    expect({"name": "FERRY_NAMESPACE", "fieldRef": "metadata.namespace"} in out["controlPlane"]["env"], "render_commands.py FERRY_NAMESPACE")
    expect({"name": "RUST_LOG", "value": "info"} in out["controlPlane"]["env"], "render_commands.py RUST_LOG")
    mounts = {m["mountPath"]: m for m in out["proxy"]["mounts"]}
    expect_eq(
        mounts.get("/var/run/ferry/token", {}).get("volume", {}).get("kind"),
        "serviceAccountToken",
        "render_commands.py proxy token mount",
    )
    expect_eq(mounts.get("/var/run/ferry/ca", {}).get("volume"), {"kind": "configMap", "name": "ferry-ca-root"}, "render_commands.py proxy CA mount")
    expect_eq(out["proxy"]["capabilities"], {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}, "render_commands.py proxy capabilities")
    expect_eq((out["controlPlane"]["runAsUser"], out["controlPlane"]["readOnlyRootFilesystem"]), (65532, True), "render_commands.py control plane user and root")
    expect(out["proxy"]["hostNetwork"] and not out["controlPlane"]["hostNetwork"], "render_commands.py hostNetwork")

    with tempfile.TemporaryDirectory() as tmp:
        values_file = Path(tmp) / "values.yaml"
        values_file.write_text(
            "logLevel: debug\nproxy:\n  drainTimeoutSeconds: 3\n  kubeProxyReplacement: false\n"
            "  extraEnv:\n    - name: FROM_SECRET\n      valueFrom:\n        secretKeyRef: {name: s, key: k}\n"
        )
        # --set wins over --values, as with helm.
        proc = run("--values", str(values_file), "--set", "proxy.kubeProxyReplacement=true", "--set-string", "logLevel=trace", "--namespace", "mesh")
        expect(proc.returncode == 0, f"render_commands.py --values/--set: exit {proc.returncode}: {proc.stderr[-500:]}")
        out = json.loads(proc.stdout)
        args = out["proxy"]["args"]
        expect("--kube-proxy-replacement=true" in args, f"render_commands.py --set not applied: {args}")
        expect_eq(args[args.index("--drain-timeout") + 1], "3s", "render_commands.py --values not applied (drain timeout)")
        expect_eq(args[args.index("--control-plane") + 1], "https://ferry-control-plane.mesh.svc:15010", "render_commands.py --namespace")
        expect({"name": "RUST_LOG", "value": "trace"} in out["proxy"]["env"], f"render_commands.py --set-string: {out['proxy']['env']}")
        expect(
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}} in out["proxy"]["env"],
            f"render_commands.py valueFrom entry: {out['proxy']['env']}",
        )
    proc = run("--set", "proxy.iptablesBackend=ipvs")
    expect(
        proc.returncode == 2 and "iptablesBackend" in proc.stderr and not proc.stdout,
        f"render_commands.py must refuse invalid values with status 2: exit {proc.returncode}, stderr {proc.stderr[-300:]!r}",
    )
    counts["render_commands runs"] = 3


def check_notes(chart: Any) -> None:
    for values, needles in (
        (
            {},
            (
                "kubectl label namespace <ns> ferry.dev/mesh=enabled",
                f"kubectl -n {NAMESPACE} get pods",
                "15020:15020",
                "/metrics",
                "left to kube-proxy",
                "prometheus.io/scrape",
                "two schedulable nodes",
                f"helm test {RELEASE}",
            ),
        ),
        ({"proxy": {"kubeProxyReplacement": True}}, ("proxy.kubeProxyReplacement is true",)),
        (
            {"metrics": {"podMonitor": {"enabled": True}, "alerts": {"enabled": True}}},
            ("PodMonitors ferry-proxy and ferry-control-plane", "scrapes each pod twice", "PrometheusRule ferry"),
        ),
    ):
        rendered = render(chart, values)
        notes = next(v for k, v in rendered.items() if k.endswith("NOTES.txt"))
        for needle in needles:
            expect(needle in notes, f"NOTES.txt ({values}) lacks {needle!r}")
    notes = next(v for k, v in render(chart, {}).items() if k.endswith("NOTES.txt"))
    expect("PodMonitor" not in notes and "PrometheusRule" not in notes, "NOTES.txt: no Prometheus Operator objects by default")
    expect("15000:15000" in notes and "0.0.0.0:15000" not in notes, "NOTES.txt: the admin port is reached through a port-forward only")


# ---------------------------------------------------------------------------


def binary_options(path: Path) -> dict[str, list[str] | None]:
    """The long options of a binary's --help (clap): option -> its possible
    values when the help lists them, else None."""
    help_text = subprocess.run([str(path), "--help"], capture_output=True, text=True, check=True).stdout
    options: dict[str, list[str] | None] = {}
    current = None
    listing = False  # in a long help's "Possible values:" list
    for line in help_text.splitlines():
        m = re.match(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", line)
        if m:
            current = m.group(1)
            options[current] = None
            listing = False
        if not current:
            continue
        pv = re.search(r"\[possible values: ([^\]]+)\]", line)
        if pv:
            options[current] = [v.strip() for v in pv.group(1).split(",")]
        elif line.strip() == "Possible values:":
            listing = True
            options[current] = []
        elif listing:
            item = re.match(r"^\s+- ([^:\s]+)", line)
            if item:
                options[current].append(item.group(1))  # type: ignore[union-attr]
            else:
                listing = False
    return options


def host_triple() -> str:
    """The triple cargo builds for here (`rustc -vV`'s host line)."""
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("host: "):
            return line.removeprefix("host: ").strip()
    raise RuntimeError(f"rustc -vV printed no host line:\n{out}")


def check_flags_exist(docs: list[dict[str, Any]], counts: dict[str, int]) -> None:
    """Every flag the chart passes is one the binaries accept (their --help),
    with a value they accept where they list the possible ones; and the
    schema's choices for those values are the binaries' own."""
    binaries: dict[str, Path | None] = {}
    # .cargo/config.toml names the target, so cargo puts the binaries under
    # target/<host triple>/<profile>.
    target = REPO / "target" / host_triple()
    for name in ("ferry-control-plane", "ferry-proxy"):
        built = [target / profile / name for profile in ("debug", "release")]
        built = [p for p in built if p.is_file()]
        # The newest build, debug or release.
        binaries[name] = max(built, key=lambda p: p.stat().st_mtime) if built else None
    missing = [n for n, p in binaries.items() if p is None]
    expect(not missing, f"build the binaries first (cargo build --workspace --bins): {missing}")
    options = {name: binary_options(path) for name, path in binaries.items() if path}

    def built_at(name: str) -> str:
        path = binaries[name]
        assert path is not None
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
        return f"{path.relative_to(REPO)}, built {stamp}"

    problems = []
    checked = 0
    for doc in docs:
        for c in (doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []):
            name = Path((c.get("command") or [""])[0]).name
            if name not in options:
                continue
            known = options[name]
            args = [str(a) for a in c.get("args") or []]
            for i, arg in enumerate(args):
                if not arg.startswith("--"):
                    continue
                flag, eq, value = arg.partition("=")
                checked += 1
                if flag not in known:
                    problems.append(f"{name} ({built_at(name)}) does not accept {flag} (from the chart's {doc['kind']} {doc['metadata']['name']})")
                    continue
                choices = known[flag]
                if choices is not None:
                    given = value if eq else (args[i + 1] if i + 1 < len(args) else "")
                    if given not in choices:
                        problems.append(f"{name} {flag}: {given!r} is not one of {choices}")
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    for value_path, binary, flag in (
        (("proxy", "iptablesBackend"), "ferry-proxy", "--iptables-backend"),
        (("logFormat",), "ferry-proxy", "--log-format"),
        (("logFormat",), "ferry-control-plane", "--log-format"),
    ):
        node = schema
        for i, part in enumerate(value_path):
            node = node[part] if i == 0 else node["properties"][part]
        choices = options[binary].get(flag)
        if choices is not None and sorted(node["enum"]) != sorted(choices):
            problems.append(f"values.schema.json {'.'.join(value_path)} allows {node['enum']}, {binary} {flag} takes {choices}")
    expect(not problems, "flags:\n    " + "\n    ".join(problems))
    expect(checked >= 20, f"only {checked} flags checked")
    counts["flags checked"] = checked


def main() -> int:
    started = time.monotonic()
    failures: list[str] = []
    passed = 0
    counts: dict[str, int] = {}

    def run(name: str, fn: Callable[[], None]) -> None:
        nonlocal passed
        try:
            fn()
            passed += 1
        except Failure as exc:
            failures.append(f"{name}: {exc}")
        except Exception:  # noqa: BLE001 - report and go on with the other checks
            failures.append(f"{name}: unexpected error\n{traceback.format_exc()}")

    expect_eq(CHART.is_dir(), True, f"chart folder {CHART}")
    chart = helm.Chart.load(CHART)
    try:
        meta = chart.metadata
        run("Chart.yaml", lambda: (
            expect_eq((meta.get("apiVersion"), meta.get("name"), meta.get("version"), meta.get("appVersion")),
                      ("v2", "ferry", APP_VERSION, APP_VERSION), "Chart.yaml apiVersion/name/version/appVersion")
        ))
        defaults = chart.values
        run("lint", lambda: check_lint(counts))
        run("schema closed", lambda: check_schema_is_closed(counts))
        run("values documented", lambda: check_values_documented(counts))
        run("invalid values rejected", lambda: check_invalid_values_rejected(chart, counts))

        rendered: dict[str, list[dict[str, Any]]] = {}
        for set_name, overrides in VALID_VALUE_SETS.items():
            def render_set(set_name: str = set_name, overrides: dict[str, Any] = overrides) -> None:
                values = deep_merge(defaults, overrides)
                merged = chart.merge_values(overrides)
                expect_eq(merged, values, f"[{set_name}] merged values")
                docs = parse_manifests(render(chart, overrides))
                rendered[set_name] = docs
                check_objects(set_name, values, docs, NAMESPACE)
            run(f"render {set_name}", render_set)

        def other_namespace() -> None:
            docs = parse_manifests(render(chart, {}, namespace="mesh"))
            check_objects("defaults in namespace mesh", deep_merge(defaults, {}), docs, "mesh")
        run("render in another namespace", other_namespace)

        def defaults_docs() -> list[dict[str, Any]]:
            return rendered.get("defaults") or parse_manifests(render(chart, {}))

        run("kubernetes schemas", lambda: check_kubernetes_schemas(rendered, counts))
        run("helm test scripts", lambda: check_test_scripts(defaults_docs(), counts))
        run("render_commands.py", lambda: check_render_commands(counts))
        run("NOTES.txt", lambda: check_notes(chart))
        run("flags exist", lambda: check_flags_exist(defaults_docs() + rendered.get("production", []), counts))
    finally:
        chart.close()

    elapsed = time.monotonic() - started
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    if failures:
        print(f"chart: {passed} passed, {len(failures)} failed ({elapsed:.1f}s)")
        return 1
    print(
        f"chart: lint ok ({counts['lint runs']} strict runs); "
        f"{len(VALID_VALUE_SETS)} value sets x {len(KUBE_VERSIONS)} Kubernetes versions "
        f"({KUBE_VERSIONS[0]}..{KUBE_VERSIONS[-1]}): {counts['manifests valid']} manifests valid "
        f"({counts['custom resources skipped']} Prometheus Operator objects checked by the test instead); "
        f"{counts['invalid value sets rejected']} invalid value sets rejected; RBAC exact; "
        f"helm test scripts ok ({counts['test script cases']} cases x {counts['test script shells']} shells); "
        f"render_commands.py ok; "
        f"{counts['flags checked']} flags accepted by the binaries"
    )
    print(f"chart: {passed} passed, 0 failed ({elapsed:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
