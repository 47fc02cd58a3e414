#!/usr/bin/env python3
"""Turns the DaemonSet's pod template into the Pod the kubelet would run on one
node, for `podman kube play` (podman 4.3 plays Pods, not DaemonSets).

    hack/daemonset_pod.py manifests/daemonset.yaml --node NAME --pod-ip IP \
        --pod OUT.yaml --expect OUT.json

It does what the kubelet does and podman 4.3 does not, and nothing else:
- env `valueFrom.fieldRef` becomes the value the kubelet would give
  (spec.nodeName, status.podIP, metadata.name, metadata.namespace); any other
  fieldRef, or any other valueFrom, is an error (the test would not mean much);
- `$(VAR)` in command and args is expanded from the container's env, `$$` is a
  literal `$` (Kubernetes' rules); a reference to an undefined variable is an
  error, where the kubelet would pass it on verbatim (a bug in the manifest);
- a hostNetwork pod's `ports` are dropped: with host networking they only
  document what the container listens on (the kubelet maps nothing), and podman
  refuses port mappings without its own network; they go to --expect instead;
- the pod's restartPolicy Always becomes OnFailure: podman 4.3 applies it to
  init containers too and restarts one that exited 0 over and over (the
  kubelet restarts only regular containers); portgroupd is still restarted
  when it fails;
- podman's annotation for init containers that stay after they ran, so that
  the test can read the init container's exit code and log (the kubelet keeps
  them too; podman 4.3 removes "once" init containers).
Everything else (securityContext, volumes, probes, resources, ...) is passed on
as the manifest has it. --expect writes what the test then checks on the running
containers, derived from the same manifest.
"""
import argparse
import json
import re
import sys

import yaml

FIELDS = {
    "spec.nodeName": lambda a: a.node,
    "status.podIP": lambda a: a.pod_ip,
    "status.hostIP": lambda a: a.pod_ip,
    "metadata.name": lambda a: a.pod_name,
    "metadata.namespace": lambda a: a.namespace,
}
REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def fail(msg):
    print("daemonset_pod.py: %s" % msg, file=sys.stderr)
    sys.exit(1)


def expand(text, env, where):
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        if name not in env:
            fail("%s: $(%s) names no env variable of the container" % (where, name))
        return env[name]

    return REF.sub(sub, text)


def resolve_container(c, args, where):
    """Resolves env and expands command/args in place; returns (env, the
    variables command/args reference)."""
    refs = sorted({m.group(1) for key in ("command", "args") for v in c.get(key, [])
                   for m in REF.finditer(str(v)) if m.group(1)})
    env = {}
    for e in c.get("env", []):
        name = e["name"]
        if "value" in e:
            env[name] = expand(str(e["value"]), env, "%s.env.%s" % (where, name))
        elif "valueFrom" in e:
            ref = e["valueFrom"].get("fieldRef")
            if not ref or ref.get("fieldPath") not in FIELDS:
                fail("%s.env.%s: unsupported valueFrom %r" % (where, name, e["valueFrom"]))
            env[name] = FIELDS[ref["fieldPath"]](args)
            e.pop("valueFrom")
            e["value"] = env[name]
        else:
            env[name] = ""
    for key in ("command", "args"):
        if key in c:
            c[key] = [expand(str(v), env, "%s.%s" % (where, key)) for v in c[key]]
    return env, refs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("daemonset")
    ap.add_argument("--node", required=True)
    ap.add_argument("--pod-ip", required=True)
    ap.add_argument("--pod", required=True, help="where to write the Pod YAML")
    ap.add_argument("--expect", required=True, help="where to write the expectations (JSON)")
    args = ap.parse_args()

    with open(args.daemonset) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    sets = [d for d in docs if d.get("kind") == "DaemonSet"]
    if len(sets) != 1:
        fail("%s: expected one DaemonSet, found %d" % (args.daemonset, len(sets)))
    ds = sets[0]
    template = ds["spec"]["template"]
    args.namespace = ds["metadata"].get("namespace", "default")
    args.pod_name = "%s-%s" % (ds["metadata"]["name"], args.node)

    meta = dict(template.get("metadata", {}))
    meta["name"] = args.pod_name
    annotations = dict(meta.get("annotations", {}))
    annotations["io.podman.annotations.init.container.type"] = "always"
    meta["annotations"] = annotations
    spec = template["spec"]
    if spec.get("restartPolicy", "Always") == "Always":
        spec["restartPolicy"] = "OnFailure"

    expect = {"pod": args.pod_name, "containers": {}, "volumes": {}}
    for v in spec.get("volumes", []):
        expect["volumes"][v["name"]] = v
    for kind in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(kind, [])):
            env, refs = resolve_container(c, args, "%s[%d] %s" % (kind, i, c["name"]))
            sc = c.get("securityContext", {})
            caps = sc.get("capabilities", {})
            probes = {}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe in c and "httpGet" in c[probe]:
                    probes[probe] = c[probe]["httpGet"]
            ports = c.pop("ports", []) if spec.get("hostNetwork") else c.get("ports", [])
            expect["containers"][c["name"]] = {
                "ports": ports,
                "init": kind == "initContainers",
                "image": c["image"],
                "command": c.get("command"),
                "args": c.get("args", []),
                "env": env,
                "argRefs": refs,
                "mounts": c.get("volumeMounts", []),
                "readOnlyRootFilesystem": bool(sc.get("readOnlyRootFilesystem")),
                "privileged": bool(sc.get("privileged")),
                "capDrop": caps.get("drop", []),
                "capAdd": caps.get("add", []),
                "probes": probes,
            }
    expect["hostNetwork"] = bool(spec.get("hostNetwork"))

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    with open(args.pod, "w") as f:
        yaml.safe_dump(pod, f, sort_keys=False)
    with open(args.expect, "w") as f:
        json.dump(expect, f, indent=1)


if __name__ == "__main__":
    main()
