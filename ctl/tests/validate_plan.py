#!/usr/bin/env python3
"""Validates a directory that `portgroupctl plan` wrote, with the manifest
validation of hack/validate_manifests.py (schemas under manifests/schemas/,
including Forklift's NetworkMap, plus its cross-reference checks).

    python3 ctl/tests/validate_plan.py PLAN_DIR [--portgroupd BIN] [--plugin BIN]

What differs from validating manifests/: the schemas come from the repository's
manifests/schemas/, namespaces are the cluster's (a plan defines none), and a
NetworkMap's multus destinations must name a NAD of the plan.
Prints one line per file; exits 1 if anything failed.
"""

import argparse
import inspect
import os
import sys

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "hack"))

import validate_manifests as vm  # noqa: E402


class PlanValidator(vm.Validator):
    def check_namespace(self, doc):
        # A plan lands in namespaces that already exist in the cluster.
        return []

    def check_networkmap(self, doc):
        problems = []
        for i, pair in enumerate(((doc.get("spec") or {}).get("map")) or []):
            dest = (pair or {}).get("destination") or {}
            if dest.get("type") != "multus":
                continue
            name, ns = dest.get("name"), dest.get("namespace")
            if not any(self.find("NetworkAttachmentDefinition", name=name, namespace=ns)):
                problems.append("spec.map.%d.destination: no NetworkAttachmentDefinition %s/%s in the plan" % (i, ns, name))
        return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan")
    ap.add_argument("--kubernetes-version", "-k", default="1.30.0")
    ap.add_argument("--portgroupd", default=os.path.join(REPO, "target", "debug", "portgroupd"))
    ap.add_argument("--plugin", default=os.path.join(REPO, "target", "debug", "portgroup"))
    args = ap.parse_args()
    params = inspect.signature(vm.Validator.__init__).parameters
    extra = {}
    # The manifest validation may check configs through the binaries.
    for name, path in (("portgroupd", args.portgroupd), ("plugin", args.plugin)):
        if name in params:
            if not os.access(path, os.X_OK):
                print("FATAL %s: %s is not built (cargo build --workspace)" % (name, path))
                return 2
            extra[name] = path
    validator = PlanValidator(os.path.normpath(args.plan), args.kubernetes_version, **extra)
    validator.schema_dir = os.path.join(REPO, "manifests", "schemas")
    return validator.run()


if __name__ == "__main__":
    sys.exit(main())
