#!/usr/bin/env python3
"""Offline tests of the Helm chart deploy/helm/ferry.

Needs helm-python-sdk (the Helm v4 SDK, no helm binary) and
kubernetes-validate; scripts/chart-test.sh sets up both in a venv and runs
this file. Checks:

- `helm lint --strict` finds no warning or error, for every value set and
  every supported Kubernetes version;
- values.schema.json closes every object (additionalProperties: false) and
  rejects invalid value sets, at render time too;
- every manifest rendered from each valid value set is valid, strictly (no
  unknown fields), against the Kubernetes 1.29 to 1.33 API schemas;
- the RBAC is exactly the documented least privilege, the proxy has none,
  the security contexts, probes, arguments and volumes are as designed;
- the `helm test` pod's script passes and fails when it should (run here
  with stand-ins for curl and sleep).

Exit status 0 when every check passes; otherwise 1, with one line per failure.
"""

from __future__ import annotations

import copy
import json
import re
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

try:
    import helm_python as helm
    import kubernetes_validate.utils as kv_utils
    from kubernetes_validate.version import __version__ as KV_VERSION
    import yaml
except ImportError as exc:  # pragma: no cover - environment problem
    sys.exit(
        f"test_chart.py: missing dependency ({exc}); run scripts/chart-test.sh, "
        "which installs helm-python-sdk and kubernetes-validate in a venv"
    )

REPO = Path(__file__).resolve().parents[2]
# FERRY_CHART: another copy of the chart (used to check that the checks fail).
CHART = Path(os.environ.get("FERRY_CHART", REPO / "deploy" / "helm" / "ferry")).resolve()
RELEASE = "ferry"
NAMESPACE = "ferry-system"
KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
HELM_SEVERITY = {0: "unknown", 1: "info", 2: "warning", 3: "error"}

# ---------------------------------------------------------------------------
# Value sets

VALID_VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "text-logs+otlp+user-ca": {
        "logFormat": "text",
        "otlp": {"endpoint": "http://otel-collector.observability.svc:4317"},
        "meshByDefault": True,
        "controlPlane": {"caSecret": {"name": "my-mesh-ca", "create": False}},
    },
    "one-replica+custom-image+tolerations": {
        "image": {
            "repository": "registry.example.com/mesh/ferry",
            "tag": "0.2.0-rc.1",
            "pullPolicy": "Always",
        },
        "controlPlane": {"replicas": 1},
        "proxy": {
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
    "trust-domain+resources": {
        "trustDomain": "prod.example.org",
        "clusterDomain": "k8s.internal",
        "tokenAudience": "ferry-prod",
        "controlPlane": {
            "workloadCertTTL": 3600,
            "resources": {
                "requests": {"cpu": "250m", "memory": "256Mi"},
                "limits": {"cpu": 2, "memory": "1Gi"},
            },
        },
        "proxy": {
            "captureInterface": "cilium_host",
            "accessLogRate": 0,
            "stateDir": "",
            "resources": {
                "requests": {"cpu": "500m", "memory": "128Mi", "ephemeral-storage": "64Mi"},
                "limits": {"memory": "512Mi"},
            },
        },
        "test": {"image": "registry.example.com/tools/curl:8.11.0"},
    },
}

INVALID_VALUE_SETS: dict[str, dict[str, Any]] = {
    "logFormat xml": {"logFormat": "xml"},
    "negative replicas": {"controlPlane": {"replicas": -1}},
    "unknown key": {"proxy": {"captureInterfaces": "eth0"}},
    "bad toleration operator": {"proxy": {"tolerations": [{"operator": "Sometimes"}]}},
    "string meshByDefault": {"meshByDefault": "yes"},
    "negative access log rate": {"proxy": {"accessLogRate": -5}},
    "trust domain with a space": {"trustDomain": "my mesh"},
    "relative state folder": {"proxy": {"stateDir": "var/lib/ferry"}},
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


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing for plain maps: override wins, lists are replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__source", path)
                docs.append(doc)
    return docs


def strip_source(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "__source"}


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    expect(len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}")
    return found[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"] if workload["kind"] != "Pod" else workload["spec"]
    found = [c for c in spec["containers"] if c["name"] == name]
    expect(len(found) == 1, f"{workload['kind']}/{workload['metadata']['name']}: no container {name!r}")
    return found[0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in c.get("env", [])}


RESTRICTED = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def render(chart: Any, values: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=namespace, is_install=True)


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
            for key, value in values.items():
                if key not in props:
                    undescribed.append(f"{where}.{key}")
                else:
                    cover(value, props[key], f"{where}.{key}")

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    cover(defaults, schema, "")
    expect(not undescribed, f"values.yaml keys missing from values.schema.json: {undescribed}")
    counts["schema objects closed"] = 1


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


def check_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]], counts: dict[str, int]) -> None:
    supported = kv_utils.all_versions()
    missing = [v for v in KUBE_VERSIONS if v not in supported]
    expect(not missing, f"kubernetes-validate {KV_VERSION} has no schemas for Kubernetes {missing}")
    problems = []
    validated = 0
    for set_name, docs in rendered.items():
        for kube in KUBE_VERSIONS:
            for doc in docs:
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
    counts["manifests valid"] = validated


def check_objects(set_name: str, values: dict[str, Any], docs: list[dict[str, Any]], namespace: str) -> None:
    """Structure of one rendering against the values it came from."""
    ctx = f"[{set_name}]"
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    expect_eq(
        kinds,
        sorted(
            [
                "ClusterRole/ferry-control-plane",
                "ClusterRoleBinding/ferry-control-plane",
                "ConfigMap/ferry-config",
                "DaemonSet/ferry-proxy",
                "Deployment/ferry-control-plane",
                "Pod/ferry-test-mesh-traffic",
                "Role/ferry-control-plane",
                "RoleBinding/ferry-control-plane",
                "Service/ferry-control-plane",
                "ServiceAccount/ferry-control-plane",
                "ServiceAccount/ferry-proxy",
            ]
        ),
        f"{ctx} rendered objects",
    )

    # Labels and namespaces.
    common = {
        "app.kubernetes.io/name": "ferry",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/version": "0.1.0",
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": "ferry-0.1.0",
    }
    for d in docs:
        labels = d["metadata"].get("labels", {})
        for key, value in common.items():
            expect_eq(labels.get(key), value, f"{ctx} {d['kind']}/{d['metadata']['name']} label {key}")
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            expect_eq(d["metadata"].get("namespace"), namespace, f"{ctx} {d['kind']}/{d['metadata']['name']} namespace")

    image = f"{values['image']['repository']}:{values['image']['tag'] or '0.1.0'}"
    host = f"ferry-control-plane.{namespace}.svc"

    # --- RBAC -----------------------------------------------------------------
    cr = one(docs, "ClusterRole", "ferry-control-plane")
    expect_rules(normalise_rules(cr["rules"]), EXPECTED_CLUSTER_RULES, f"{ctx} ClusterRole rules")
    expect("aggregationRule" not in cr, f"{ctx} ClusterRole must not aggregate")
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
                subject.get("name") != "ferry-proxy",
                f"{ctx} the proxy ServiceAccount must have no RBAC, but {binding['kind']}/{binding['metadata']['name']} binds it",
            )

    # --- control plane ----------------------------------------------------------
    dep = one(docs, "Deployment", "ferry-control-plane")
    expect_eq(dep["spec"]["replicas"], values["controlPlane"]["replicas"], f"{ctx} control plane replicas")
    pod = dep["spec"]["template"]["spec"]
    expect_eq(pod["serviceAccountName"], "ferry-control-plane", f"{ctx} control plane serviceAccountName")
    cp = container(dep, "control-plane")
    expect_eq(cp["image"], image, f"{ctx} control plane image")
    expect_eq(cp["imagePullPolicy"], values["image"]["pullPolicy"], f"{ctx} control plane pullPolicy")
    ca = values["controlPlane"]["caSecret"]
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
            "--workload-cert-ttl", str(values["controlPlane"]["workloadCertTTL"]),
            "--log-format", values["logFormat"],
        ],
        f"{ctx} control plane args",
    )
    expect_eq(
        env_of(cp).get("FERRY_NAMESPACE", {}).get("valueFrom"),
        {"fieldRef": {"fieldPath": "metadata.namespace"}},
        f"{ctx} control plane FERRY_NAMESPACE",
    )
    expect_eq(
        {p["name"]: p["containerPort"] for p in cp["ports"]},
        {"grpc": 15010, "metrics": 15014},
        f"{ctx} control plane ports",
    )
    expect_eq(cp["readinessProbe"]["httpGet"], {"path": "/healthz/ready", "port": 15014}, f"{ctx} control plane readinessProbe")
    expect_eq(cp["securityContext"], RESTRICTED, f"{ctx} control plane securityContext")
    expect_eq(cp.get("resources"), values["controlPlane"]["resources"], f"{ctx} control plane resources")

    svc = one(docs, "Service", "ferry-control-plane")
    expect_eq(
        sorted((p["name"], p["port"]) for p in svc["spec"]["ports"]),
        [("grpc", 15010), ("metrics", 15014)],
        f"{ctx} Service ports",
    )
    expect_eq(svc["spec"]["selector"], dep["spec"]["selector"]["matchLabels"], f"{ctx} Service selector")
    template_labels = dep["spec"]["template"]["metadata"]["labels"]
    for k, v in dep["spec"]["selector"]["matchLabels"].items():
        expect_eq(template_labels.get(k), v, f"{ctx} control plane pod label {k}")

    # --- proxy --------------------------------------------------------------------
    sa = one(docs, "ServiceAccount", "ferry-proxy")
    expect_eq(sa.get("automountServiceAccountToken"), False, f"{ctx} proxy ServiceAccount automount")
    ds = one(docs, "DaemonSet", "ferry-proxy")
    pod = ds["spec"]["template"]["spec"]
    expect_eq(pod["serviceAccountName"], "ferry-proxy", f"{ctx} proxy serviceAccountName")
    expect_eq(pod.get("hostNetwork"), True, f"{ctx} proxy hostNetwork")
    expect_eq(pod.get("dnsPolicy"), "ClusterFirstWithHostNet", f"{ctx} proxy dnsPolicy")
    expect_eq(pod.get("priorityClassName"), "system-node-critical", f"{ctx} proxy priorityClassName")
    expect_eq(pod.get("tolerations", []), values["proxy"]["tolerations"], f"{ctx} proxy tolerations")
    if set_name == "defaults":
        expect(
            any(t == {"operator": "Exists"} for t in pod.get("tolerations", [])),
            f"{ctx} by default the proxy must tolerate every taint (operator Exists, no key, no effect)",
        )
    for k, v in ds["spec"]["selector"]["matchLabels"].items():
        expect_eq(ds["spec"]["template"]["metadata"]["labels"].get(k), v, f"{ctx} proxy pod label {k}")

    px = container(ds, "proxy")
    expect_eq(px["image"], image, f"{ctx} proxy image")
    expect_eq(
        px["args"],
        [
            "--node", "$(FERRY_NODE_NAME)",
            "--control-plane", f"https://{host}:15010",
            "--ca-root", "/var/run/ferry/ca/ca.pem",
            "--token-file", "/var/run/ferry/token/token",
            "--admin", "0.0.0.0:15000",
            "--hbone", "0.0.0.0:15008",
            "--capture-listen", "0.0.0.0:15001",
            "--inbound-plaintext-listen", "0.0.0.0:15006",
            "--capture-interface", values["proxy"]["captureInterface"],
            "--access-log-rate", str(values["proxy"]["accessLogRate"]),
            "--cluster-domain", values["clusterDomain"],
            "--log-format", values["logFormat"],
        ]
        + (["--state-dir", "/var/lib/ferry"] if values["proxy"]["stateDir"] else []),
        f"{ctx} proxy args",
    )
    env = env_of(px)
    expect_eq(env.get("FERRY_NODE_NAME", {}).get("valueFrom"), {"fieldRef": {"fieldPath": "spec.nodeName"}}, f"{ctx} proxy FERRY_NODE_NAME")
    endpoint = values["otlp"]["endpoint"]
    if endpoint:
        expect_eq(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", {}).get("value"), endpoint, f"{ctx} proxy OTEL_EXPORTER_OTLP_ENDPOINT")
    else:
        expect("OTEL_EXPORTER_OTLP_ENDPOINT" not in env, f"{ctx} tracing must be off without otlp.endpoint")
    expect_eq(
        {p["name"]: p["containerPort"] for p in px["ports"]},
        {"hbone": 15008, "admin": 15000},
        f"{ctx} proxy ports",
    )
    expect_eq(px["readinessProbe"]["httpGet"], {"path": "/healthz/ready", "port": 15000}, f"{ctx} proxy readinessProbe")
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
    expect_eq(px.get("resources"), values["proxy"]["resources"], f"{ctx} proxy resources")

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in px["volumeMounts"]}
    token = volumes[mounts["/var/run/ferry/token"]]
    expect_eq(
        token.get("projected"),
        {"sources": [{"serviceAccountToken": {"audience": values["tokenAudience"], "expirationSeconds": 3600, "path": "token"}}]},
        f"{ctx} proxy token volume",
    )
    expect_eq(volumes[mounts["/var/run/ferry/ca"]].get("configMap"), {"name": "ferry-ca-root"}, f"{ctx} proxy CA root volume")
    if values["proxy"]["stateDir"]:
        expect_eq(
            volumes[mounts["/var/lib/ferry"]].get("hostPath"),
            {"path": values["proxy"]["stateDir"], "type": "DirectoryOrCreate"},
            f"{ctx} proxy state folder",
        )
    else:
        expect("/var/lib/ferry" not in mounts, f"{ctx} no state folder when proxy.stateDir is empty")
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

    # --- helm test pod ----------------------------------------------------------------
    test = one(docs, "Pod", "ferry-test-mesh-traffic")
    expect_eq(test["__source"], "ferry/templates/tests/mesh-traffic.yaml", f"{ctx} test pod template")
    expect_eq(test["metadata"].get("annotations", {}).get("helm.sh/hook"), "test", f"{ctx} test pod hook")
    expect_eq(test["spec"].get("restartPolicy"), "Never", f"{ctx} test pod restartPolicy")
    tc = container(test, "check")
    expect_eq(tc["image"], values["test"]["image"], f"{ctx} test pod image")
    expect_eq(tc["securityContext"], RESTRICTED, f"{ctx} test pod securityContext")
    expect_eq(env_of(tc).get("METRICS_URL", {}).get("value"), f"http://{host}:15014/metrics", f"{ctx} test pod URL")
    expect("ferry_cp_connected_proxies" in tc["command"][-1], f"{ctx} test script must check ferry_cp_connected_proxies")


def check_test_script(docs: list[dict[str, Any]], counts: dict[str, int]) -> None:
    """Run the `helm test` pod's script with stand-ins for curl and sleep."""
    test = one(docs, "Pod", "ferry-test-mesh-traffic")
    c = container(test, "check")
    expect_eq(c["command"][:2], ["/bin/sh", "-c"], "test pod command")
    script = c["command"][2]
    url = env_of(c)["METRICS_URL"]["value"]

    def metrics(value: str) -> str:
        return (
            "# HELP ferry_cp_connected_proxies Proxies with an open config stream.\n"
            "# TYPE ferry_cp_connected_proxies gauge\n"
            f"ferry_cp_connected_proxies {value}\n"
            "ferry_cp_connected_proxies_total_typo 9\n"
            "# EOF\n"
        )

    # Each case: the replies of successive curl calls (None: curl fails),
    # the expected exit status.
    cases = {
        "two proxies": ([metrics("2")], 0),
        "replica without proxies, then one with": ([metrics("0"), metrics("0"), metrics("1")], 0),
        "no proxies anywhere": ([metrics("0")], 1),
        "control plane unreachable": ([None], 1),
        "metric absent": (["# EOF\n"], 1),
    }
    sh = shutil.which("sh")
    expect(sh is not None, "no sh to run the test script")
    failures = []
    for name, (replies, want) in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            tmpd = Path(tmp)
            bindir = tmpd / "bin"
            bindir.mkdir()
            for i, reply in enumerate(replies):
                (tmpd / f"reply{i}").write_text(reply if reply is not None else "")
                if reply is None:
                    (tmpd / f"reply{i}.fail").write_text("")
            (tmpd / "n").write_text("0")
            # curl stand-in: checks the URL, serves reply<n> (the last one
            # again once they run out), fails like `curl -f` when told to.
            (bindir / "curl").write_text(
                f"""#!/bin/sh
for last; do :; done
[ "$last" = "{url}" ] || {{ echo "unexpected URL $last" >&2; exit 3; }}
n=$(cat {tmpd}/n); echo $((n + 1)) > {tmpd}/n
i=$n; [ -e {tmpd}/reply$i ] || i={len(replies) - 1}
[ -e {tmpd}/reply$i.fail ] && {{ echo "curl: (7) Failed to connect" >&2; exit 7; }}
cat {tmpd}/reply$i
"""
            )
            (bindir / "sleep").write_text("#!/bin/sh\nexit 0\n")
            for f in bindir.iterdir():
                f.chmod(0o755)
            env = {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "METRICS_URL": url}
            proc = subprocess.run([sh, "-c", script], env=env, capture_output=True, text=True, timeout=60)
            if proc.returncode != want:
                failures.append(
                    f"{name}: exit {proc.returncode}, expected {want}; stdout: {proc.stdout[-300:]!r} stderr: {proc.stderr[-300:]!r}"
                )
    expect(not failures, "helm test script:\n    " + "\n    ".join(failures))
    counts["test script cases"] = len(cases)


def check_notes(chart: Any) -> None:
    rendered = render(chart, {})
    notes = next(v for k, v in rendered.items() if k.endswith("NOTES.txt"))
    for needle in (
        "kubectl label namespace <ns> ferry.dev/mesh=enabled",
        f"kubectl -n {NAMESPACE} get pods",
        "/metrics",
        f"helm test {RELEASE}",
    ):
        expect(needle in notes, f"NOTES.txt lacks {needle!r}")


# ---------------------------------------------------------------------------


def check_flags_exist(docs: list[dict[str, Any]], counts: dict[str, int]) -> None:
    """Every flag the chart passes is one the binaries accept (their --help)."""
    repo = Path(__file__).resolve().parents[2]
    binaries = {"ferry-control-plane": None, "ferry-proxy": None}
    for name in binaries:
        for profile in ("debug", "release"):
            path = repo / "target" / profile / name
            if path.is_file():
                binaries[name] = path
                break
    missing = [n for n, p in binaries.items() if p is None]
    expect(not missing, f"build the binaries first (cargo build --workspace --bins): {missing}")
    checked = 0
    for doc in docs:
        for c in (doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []):
            command = (c.get("command") or [""])[0]
            name = Path(command).name
            if name not in binaries:
                continue
            help_text = subprocess.run([str(binaries[name]), "--help"], capture_output=True, text=True, check=True).stdout
            known = set(re.findall(r"--[a-z0-9-]+", help_text))
            for arg in c.get("args") or []:
                if arg.startswith("--"):
                    flag = arg.split("=", 1)[0]
                    expect(flag in known, f"{name} does not accept {flag} (from the chart's {doc['kind']} {doc['metadata']['name']})")
                    checked += 1
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
                      ("v2", "ferry", "0.1.0", "0.1.0"), "Chart.yaml apiVersion/name/version/appVersion")
        ))
        defaults = chart.values
        run("lint", lambda: check_lint(counts))
        run("schema closed", lambda: check_schema_is_closed(counts))
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

        run("kubernetes schemas", lambda: check_kubernetes_schemas(rendered, counts))
        run("helm test script", lambda: check_test_script(rendered.get("defaults") or parse_manifests(render(chart, {})), counts))
        run("NOTES.txt", lambda: check_notes(chart))
        run("flags exist", lambda: check_flags_exist(rendered.get("defaults") or parse_manifests(render(chart, {})), counts))
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
        f"({KUBE_VERSIONS[0]}..{KUBE_VERSIONS[-1]}): {counts['manifests valid']} manifests valid; "
        f"{counts['invalid value sets rejected']} invalid value sets rejected; RBAC exact; "
        f"helm test script ok ({counts['test script cases']} cases); "
        f"{counts['flags checked']} flags accepted by the binaries"
    )
    print(f"chart: {passed} passed, 0 failed ({elapsed:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
