#!/usr/bin/env bash
# Tests of the Helm chart deploy/helm/ferry, offline and without a helm
# binary or a cluster: lint (strict), values schema, rendering of several
# value sets, strict validation against the Kubernetes 1.29-1.33 API schemas,
# exact RBAC, the `helm test` scripts, tests/helm/render_commands.py, and the
# chart's flags against the built binaries (tests/helm/test_chart.py).
#
# The Python tools live in a venv at target/chart-venv (git-ignored). The first
# run creates it and installs the pinned packages from PyPI; later runs reuse
# it and need no network. The `helm test` scripts also run under busybox (the
# shell and tools of the test images) when it is installed; as root with
# apt-get, the first run installs it.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_SDK_VERSION=0.2.2          # helm-python-sdk: Helm v4 SDK (lint, template)
KUBERNETES_VALIDATE_VERSION=1.37.0  # kubernetes-validate: API schemas 1.25-1.37
VENV=target/chart-venv

log() { echo "chart-test: $*" >&2; }

# Creates the venv with python3 (3.10 or newer, for helm-python-sdk).
make_venv() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || return 1
    rm -rf "$VENV"
    "$1" -m venv "$VENV" >/dev/null 2>&1
}

venv_ready() {
    [[ -x $VENV/bin/python ]] &&
        "$VENV/bin/python" - "$HELM_SDK_VERSION" "$KUBERNETES_VALIDATE_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
want = {"helm-python-sdk": sys.argv[1], "kubernetes-validate": sys.argv[2]}
sys.exit(any(version(name) != v for name, v in want.items()))
EOF
}

if ! venv_ready; then
    if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        log "creating $VENV"
        python=${PYTHON:-python3}
        if ! make_venv "$python"; then
            # Debian's python3 lacks venv/ensurepip until python3-venv is in.
            if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
                log "installing python3-venv with apt-get"
                apt-get update -qq
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            fi
            make_venv "$python" || make_venv /usr/bin/python3 || {
                log "cannot create a venv: need python3 >= 3.10 with venv (Debian: apt-get install python3-venv)"
                exit 1
            }
        fi
    fi
    log "installing helm-python-sdk==$HELM_SDK_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "helm-python-sdk==$HELM_SDK_VERSION" \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    venv_ready || {
        log "$VENV does not have the pinned packages after pip install"
        exit 1
    }
fi

if ! command -v busybox >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing busybox with apt-get (to run the helm test scripts as the test images do)"
        { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox >/dev/null 2>&1 ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox >/dev/null; }; } ||
            log "could not install busybox: the helm test scripts run under sh only"
    else
        log "no busybox: the helm test scripts run under sh only"
    fi
fi

exec "$VENV/bin/python" tests/helm/test_chart.py
