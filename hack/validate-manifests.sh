#!/usr/bin/env bash
# Offline validation of everything under manifests/ (no cluster, no network
# beyond PyPI for the first install).
#
#   hack/validate-manifests.sh            # Kubernetes 1.30 schemas
#   K8S_VERSION=1.32.0 hack/validate-manifests.sh
#
# Built-in kinds are checked against the strict (unknown fields rejected)
# schemas that kubernetes-validate bundles; the CRD kinds
# (NetworkAttachmentDefinition, VirtualMachine) against manifests/schemas/;
# the node network config and each NAD's CNI config by the binaries' own
# --check-config (portgroupd, portgroup), so the rules live in Rust only; plus
# the cross references of hack/validate_manifests.py. Prints one line per file;
# exits non-zero on any failure.
#
# Builds portgroupd and portgroup (debug) first, unless PORTGROUPD and
# PORTGROUP_PLUGIN name binaries to use.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
# Oldest Kubernetes minor still supported by the KubeVirt releases that
# migrations target, and bundled by the pinned kubernetes-validate.
K8S_VERSION=${K8S_VERSION:-1.30.0}

have_deps() {
  K8S_VERSION="$K8S_VERSION" "$PYTHON" - <<'PY' >/dev/null 2>&1
import os, jsonschema, referencing, yaml, importlib_resources
import kubernetes_validate.utils as u
assert os.environ["K8S_VERSION"] in u.all_versions()
from jsonschema.validators import Draft202012Validator
PY
}

# hack/install-deps.sh pins kubernetes-validate 1.37.0 (schemas for Kubernetes
# 1.25 .. 1.37) and jsonschema 4.18+ (2020-12 drafts, referencing registry).
if ! have_deps; then
  hack/install-deps.sh >&2
  have_deps || { echo "validate-manifests: kubernetes-validate, jsonschema or pyyaml still missing after hack/install-deps.sh" >&2; exit 2; }
fi

if [[ -z "${PORTGROUPD:-}" || -z "${PORTGROUP_PLUGIN:-}" ]]; then
  cargo build --quiet --bin portgroupd --bin portgroup
  target_dir=$(cargo metadata --format-version 1 --no-deps |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  PORTGROUPD=${PORTGROUPD:-$target_dir/debug/portgroupd}
  PORTGROUP_PLUGIN=${PORTGROUP_PLUGIN:-$target_dir/debug/portgroup}
fi

exec "$PYTHON" hack/validate_manifests.py --kubernetes-version "$K8S_VERSION" \
  --portgroupd "$PORTGROUPD" --plugin "$PORTGROUP_PLUGIN" manifests
