#!/usr/bin/env python3
"""Offline validation of the portgroup manifests (run through hack/validate-manifests.sh).

For every YAML file under the manifests directory (schemas/ excepted) and every
JSON schema in manifests/schemas/, prints one line: "ok   FILE (what was checked)"
or "FAIL FILE", followed by the problems, indented. Exits 1 if anything failed.

Checks:
- YAML parses; no duplicate mapping keys (PyYAML would silently keep the last).
- Built-in kinds (Namespace, ServiceAccount, ConfigMap, DaemonSet, ...): the
  strict (unknown fields rejected) JSON schemas that kubernetes-validate ships
  for the chosen Kubernetes version. A kind with no schema at all fails.
- CRD kinds (NetworkAttachmentDefinition, VirtualMachine): the schemas in
  manifests/schemas/, named <kind>-<apiVersion with "/" as "-">.json; their
  metadata is checked against the same version's strict ObjectMeta.
- The node network config (config.json in a ConfigMap): `portgroupd
  --check-config`, the daemon's own validation, word for word.
- Every NAD's spec.config: `portgroup --check-config`, the plugin's own
  validation; and a named portgroup exists in the node network config, with
  an MTU no larger than the portgroup's.
- The config schemas (schemas/portgroup-*-config.json) agree with the binaries:
  every example in them, in README.md, docs/DESIGN.md and the manifests is
  accepted by schema and binary alike, and each structurally broken config of
  a fixed corpus is refused by both.
- Cross references: namespaces, ServiceAccounts and ConfigMaps a pod template
  uses, VM interfaces <-> networks, disks <-> volumes, Multus networks -> NADs,
  files a kustomization.yaml lists (and `kubectl kustomize` if kubectl exists).

The config rules themselves live in Rust only (docs/DESIGN.md, "Config
validation"); this script never re-implements them.
"""

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys

import importlib_resources
import jsonschema
import referencing
import yaml
from jsonschema.validators import Draft202012Validator

import kubernetes_validate.utils as kv

K8S_DEFS_URI = "https://kubernetes.io/api/_definitions.json"
BUILTIN_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}
CNI_CONFIG_SCHEMA = "portgroup-cni-config.json"
NODE_CONFIG_SCHEMA = "portgroup-node-config.json"


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys in a mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    "found duplicate key %r" % (key,), key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def fmt_path(path):
    return ".".join(str(p) for p in path) or "(root)"


def short(msg, limit=300):
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."



# ---------- the config schemas against the binaries ----------
# A config with one change applied: (path, value) sets, (path, DELETE) removes.
DELETE = object()
NODE_BASE = {"uplink": "eth1", "portgroups": [
    {"name": "a", "vlan": 5, "mtu": 1500, "strict": False,
     "reservations": [{"mac": "00:50:56:00:00:01", "ips": ["10.0.0.1", "2001:db8::1/64"]}]}]}
CNI_BASE = {"cniVersion": "1.0.0", "name": "a", "type": "portgroup", "portgroup": "a"}
PG, RES = ("portgroups", 0), ("portgroups", 0, "reservations", 0)
# Broken in structure: type, shape, range, pattern, unknown field. The schema and
# the binary must both refuse each.
NODE_STRUCTURAL = [
    [((), [])], [((), "x")], [((), {})],
    [(("uplink",), DELETE)], [(("uplink",), None)],
    [(("uplink",), DELETE), (("nodeUplinks",), {})],
    [(("uplink",), 5)], [(("uplink",), "")], [(("uplink",), "this-name-is-too-long")],
    [(("uplink",), "a/b")], [(("uplink",), "a:b")], [(("uplink",), "a b")], [(("uplink",), "..")],
    [(("nodeUplinks",), [])], [(("nodeUplinks",), {"w1": 5})], [(("nodeUplinks",), {"w1": "x y"})],
    [(("extra",), 1)],
    [(("portgroups",), DELETE)], [(("portgroups",), None)], [(("portgroups",), {})],
    [(("portgroups", 0), "a")], [(PG + ("name",), DELETE)], [(PG + ("vlan",), DELETE)],
    [(PG + ("name",), "A")], [(PG + ("name",), "-a")], [(PG + ("name",), "a_b")],
    [(PG + ("name",), "x" * 64)], [(PG + ("name",), 5)],
    [(PG + ("vlan",), 0)], [(PG + ("vlan",), 4095)], [(PG + ("vlan",), "5")], [(PG + ("vlan",), -1)],
    [(PG + ("vlan",), 5.5)], [(PG + ("vlan",), True)], [(PG + ("vlan",), None)],
    [(PG + ("mtu",), 67)], [(PG + ("mtu",), 65536)], [(PG + ("mtu",), "1500")],
    [(PG + ("strict",), "yes")], [(PG + ("extra",), 1)],
    [(PG + ("reservations",), {})], [(PG + ("reservations", 0), "x")],
    [(RES + ("mac",), DELETE)], [(RES + ("mac",), 5)], [(RES + ("mac",), "00:50:56:00:00")],
    [(RES + ("mac",), "00:50-56:00:00:01")], [(RES + ("mac",), "0050.5600.0001")],
    [(RES + ("mac",), "00:50:56:00:00:0g")], [(RES + ("extra",), 1)],
    [(RES + ("ips",), "10.0.0.1")], [(RES + ("ips",), [5])], [(RES + ("ips",), ["host"])],
    [(RES + ("ips",), [""])], [(RES + ("ips",), [" 10.0.0.1"])],
    [(PG + ("trunk",), "6")], [(PG + ("untagged",), True)], [(PG + ("nativeVlan",), 6)],
    [(PG + ("vlan",), DELETE), (PG + ("trunk",), 6)], [(PG + ("vlan",), DELETE), (PG + ("trunk",), "abc")],
    [(PG + ("vlan",), DELETE), (PG + ("trunk",), "")],
    [(PG + ("vlan",), DELETE), (PG + ("untagged",), "yes")],
    [(PG + ("vlan",), DELETE), (PG + ("untagged",), False)],
    [(PG + ("vlan",), DELETE), (PG + ("trunk",), "6"), (PG + ("nativeVlan",), 0)],
    [(PG + ("uplink",), "a/b")], [(PG + ("uplink",), 5)],
]
# Broken beyond structure: the binary alone refuses these, the schema leaves them to it.
NODE_SEMANTIC = [
    [(("portgroups", 1), {"name": "a", "vlan": 6})], [(("portgroups", 1), {"name": "b", "vlan": 5})],
    [(PG + ("reservations", 1), {"mac": "00:50:56:00:00:01"})],
    [(PG + ("reservations", 1), {"mac": "00:50:56:00:00:02", "ips": ["10.0.0.1/24"]})],
    [(RES + ("mac",), "01:00:5e:00:00:01")], [(RES + ("mac",), "00:00:00:00:00:00")],
    [(RES + ("ips",), ["10.0.0.256"])], [(RES + ("ips",), ["10.0.0.1/33"])],
    [(PG + ("vlan",), DELETE), (PG + ("trunk",), "0-10")],
    [(PG + ("vlan",), DELETE), (PG + ("trunk",), "1-4095")],
    [(PG + ("vlan",), DELETE), (PG + ("trunk",), "110-100")],
    [(PG + ("vlan",), DELETE), (PG + ("trunk",), "6"), (PG + ("nativeVlan",), 6)],
    [(PG + ("vlan",), DELETE), (PG + ("trunk",), "6")],
    [(("portgroups", 1), {"name": "b", "untagged": True}), (("portgroups", 2), {"name": "c", "untagged": True})],
]
CNI_STRUCTURAL = [
    [((), [])], [(("cniVersion",), DELETE)], [(("cniVersion",), 1)], [(("cniVersion",), "0.2.0")],
    [(("name",), DELETE)], [(("name",), "-a")], [(("name",), 5)],
    [(("type",), DELETE)], [(("type",), "bridge")],
    [(("portgroup",), DELETE)], [(("bridge",), "br0")], [(("portgroup",), None)],
    [(("portgroup",), "A")], [(("portgroup",), 5)],
    [(("portgroup",), DELETE), (("bridge",), "much-too-long-bridge")],
    [(("portgroup",), DELETE), (("bridge",), "")],
    [(("mtu",), 10)], [(("mtu",), 65536)], [(("mtu",), "1500")],
    [(("linkDown",), "yes")], [(("spoofCheck",), 1)], [(("conflictProbe",), "no")],
    [(("probe",), [])], [(("probe",), {"count": -1})], [(("probe",), {"count": "2"})],
    [(("probe",), {"retries": 1})],
    [(("ipam",), "static")], [(("ipam",), {"type": "../x"})], [(("ipam",), {"routes": []})],
    [(("capabilities",), [])], [(("capabilities",), {"mac": "yes"})], [(("dns",), [])],
    [(("args",), [])], [(("runtimeConfig",), 5)], [(("prevResult",), 5)],
    [(("vlan",), 100)], [(("ipMasq",), True)], [(("isGateway",), True)], [(("vlanTrunk",), [])],
    [(("logFile",), 5)], [(("logLevel",), False)],
    [(("cni.dev/attachments",), [{"containerID": 1}])], [(("cni.dev/valid-attachments",), {})],
    [(("spoofchek",), False)],
]
CORPUS = {
    "node": ("portgroup-node-config.json", NODE_BASE, NODE_STRUCTURAL, NODE_SEMANTIC),
    "cni": ("portgroup-cni-config.json", CNI_BASE, CNI_STRUCTURAL, []),
}


def mutate(base, changes):
    doc = copy.deepcopy(base)
    for path, value in changes:
        if not path:
            doc = value
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if value is DELETE:
            del parent[path[-1]]
        elif isinstance(parent, list) and path[-1] == len(parent):
            parent.append(value)
        else:
            parent[path[-1]] = value
    return doc


def config_kind(doc):
    """"node" or "cni" for a config, None for other JSON (node state, results)."""
    if not isinstance(doc, dict) or "node" in doc:
        return None
    if "type" in doc or "plugins" in doc:
        return "cni"
    return "node" if "portgroups" in doc else None


class Validator:
    def __init__(self, manifests_dir, k8s_version, portgroupd, plugin):
        self.dir = manifests_dir
        self.checkers = {"node": portgroupd, "cni": plugin}
        self.schema_dir = os.path.join(manifests_dir, "schemas")
        self.k8s_version = k8s_version
        self.failed = False
        self.docs = []  # (file, doc)
        self._crd_validators = {}
        self._registry = None

    # ---------- output ----------
    def report(self, path, what, problems):
        rel = os.path.relpath(path)
        if problems:
            self.failed = True
            print("FAIL %s (%s)" % (rel, what))
            for p in problems:
                print("       - " + p)
        else:
            print("ok   %s (%s)" % (rel, what))

    # ---------- schemas ----------
    def registry(self):
        """Kubernetes' own strict definitions for the chosen version, offline."""
        if self._registry is None:
            ref = (importlib_resources.files("kubernetes_validate")
                   / "kubernetes-json-schema" / ("v%s-local-strict" % self.k8s_version)
                   / "_definitions.json")
            defs = json.loads(ref.read_text())
            self._registry = referencing.Registry().with_resource(
                K8S_DEFS_URI, referencing.Resource.from_contents(defs))
        return self._registry

    def schema_validator(self, filename):
        if filename not in self._crd_validators:
            path = os.path.join(self.schema_dir, filename)
            if not os.path.exists(path):
                self._crd_validators[filename] = None
            else:
                with open(path) as f:
                    schema = json.load(f)
                self._crd_validators[filename] = Draft202012Validator(
                    schema, registry=self.registry())
        return self._crd_validators[filename]

    @staticmethod
    def schema_errors(validator, instance, prefix="", skip=()):
        """One line per schema violation; errors whose keyword is in skip are left out."""
        errs = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
        out = []
        for e in errs:
            if e.validator in skip:
                continue
            best = jsonschema.exceptions.best_match([e]) if e.context else e
            out.append("%s%s: %s" % (prefix, fmt_path(best.absolute_path), short(best.message)))
        return out

    def check_schema_files(self):
        for name in sorted(os.listdir(self.schema_dir)) if os.path.isdir(self.schema_dir) else []:
            path = os.path.join(self.schema_dir, name)
            if not name.endswith(".json"):
                continue
            problems = []
            try:
                with open(path) as f:
                    schema = json.load(f)
                Draft202012Validator.check_schema(schema)
                # resolve every $ref once, so a dangling reference fails here
                base = schema.get("$id", "urn:portgroup:" + name)
                resolver = self.registry().with_resource(
                    base, referencing.Resource.from_contents(schema)).resolver(base_uri=base)
                for ref in sorted(set(self._refs(schema))):
                    try:
                        resolver.lookup(ref)
                    except Exception as e:  # noqa: BLE001
                        problems.append("unresolvable $ref %s: %s" % (ref, short(e)))
            except (ValueError, jsonschema.SchemaError) as e:
                problems.append(short(getattr(e, "message", e)))
            self.report(path, "JSON schema, draft 2020-12", problems)

    def _refs(self, node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref" and isinstance(v, str):
                    yield v
                else:
                    yield from self._refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from self._refs(v)

    # ---------- loading ----------
    def manifest_files(self):
        out = []
        for root, dirs, files in os.walk(self.dir):
            dirs[:] = sorted(d for d in dirs if os.path.join(root, d) != self.schema_dir)
            for f in sorted(files):
                if f.endswith((".yaml", ".yml")):
                    out.append(os.path.join(root, f))
        return out

    def load(self, files):
        loaded = {}
        for path in files:
            try:
                with open(path) as f:
                    docs = [d for d in yaml.load_all(f, Loader=UniqueKeyLoader) if d is not None]
                bad = [i for i, d in enumerate(docs) if not isinstance(d, dict)
                       or not d.get("apiVersion") or not d.get("kind")]
                if bad:
                    loaded[path] = ["document %d: not a Kubernetes object (apiVersion and kind needed)" % i for i in bad]
                elif not docs:
                    loaded[path] = ["no YAML document in file"]
                else:
                    loaded[path] = docs
                    self.docs.extend((path, d) for d in docs)
            except yaml.YAMLError as e:
                loaded[path] = ["YAML: " + short(e)]
        return loaded

    def find(self, kind, name=None, namespace=None):
        for _, d in self.docs:
            md = d.get("metadata") or {}
            if d.get("kind") != kind:
                continue
            if name is not None and md.get("name") != name:
                continue
            if namespace is not None and md.get("namespace", "default") != namespace:
                continue
            yield d

    # ---------- per object ----------
    def validate_object(self, path, doc):
        kind, api = doc["kind"], doc["apiVersion"]
        if kind == "Kustomization" and api.startswith("kustomize.config.k8s.io/"):
            return "kustomization", self.check_kustomization(path, doc)
        crd_schema = "%s-%s.json" % (kind.lower(), api.replace("/", "-"))
        validator = self.schema_validator(crd_schema)
        if validator is not None:
            problems = self.schema_errors(validator, doc)
            what = "%s: schemas/%s" % (kind, crd_schema)
        else:
            what = "%s: kubernetes %s strict" % (kind, self.k8s_version)
            try:
                kv.validate(doc, self.k8s_version, strict=True)
                problems = []
            except kv.ValidationError as e:
                problems = ["%s: %s" % (fmt_path(e.path), short(e.message))]
            except kv.SchemaNotFoundError as e:
                problems = [e.message + " (and no schemas/%s)" % crd_schema]
        problems += self.check_namespace(doc)
        extra = getattr(self, "check_" + kind.lower(), None)
        if extra is not None:
            problems += extra(doc)
        if kind == "ConfigMap" and "config.json" in (doc.get("data") or {}):
            what += "; config.json: portgroupd --check-config"
        if kind == "NetworkAttachmentDefinition":
            what += "; spec.config: portgroup --check-config"
        return what, problems

    def check_namespace(self, doc):
        ns = (doc.get("metadata") or {}).get("namespace")
        if ns is None or ns in BUILTIN_NAMESPACES:
            return []
        if not any(self.find("Namespace", name=ns)):
            return ["metadata.namespace: namespace %r is neither built in nor defined under manifests/" % ns]
        return []

    def check_kustomization(self, path, doc):
        problems = []
        base = os.path.dirname(path)
        for key in ("resources", "components", "patches"):
            for item in doc.get(key) or []:
                ref = item if isinstance(item, str) else (item or {}).get("path")
                if ref and "://" not in ref and not os.path.exists(os.path.join(base, ref)):
                    problems.append("%s: %s does not exist" % (key, ref))
        if not problems and shutil.which("kubectl"):
            r = subprocess.run(["kubectl", "kustomize", base], capture_output=True, text=True)
            if r.returncode != 0:
                problems.append("kubectl kustomize: " + short(r.stderr))
        return problems

    # ConfigMap: the node network config
    def check_configmap(self, doc):
        data = doc.get("data") or {}
        if "config.json" not in data:
            return []
        return ["data.config.json: " + p for p in self.binary_check("node", data["config.json"])]

    def node_config(self):
        for d in self.find("ConfigMap"):
            raw = (d.get("data") or {}).get("config.json")
            if raw is not None:
                try:
                    return json.loads(raw)
                except ValueError:
                    return None
        return None

    def binary_check(self, kind, text):
        """The problems `<binary> --check-config -` finds in text ([] when valid)."""
        binary = self.checkers[kind]
        try:
            r = subprocess.run([binary, "--check-config", "-"], input=text.encode(),
                               capture_output=True, timeout=60)
        except OSError as e:
            return ["running %s --check-config: %s" % (binary, e)]
        lines = r.stdout.decode(errors="replace").splitlines()
        if r.returncode == 0 and lines == ["<stdin>: ok"]:
            return []
        if r.returncode == 1 and lines and all(l.startswith("<stdin>: ") for l in lines):
            return [l[len("<stdin>: "):] for l in lines]
        return ["%s --check-config exited %s: %s" % (
            binary, r.returncode, short(r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")))]

    # NetworkAttachmentDefinition: the CNI config string
    def check_networkattachmentdefinition(self, doc):
        raw = (doc.get("spec") or {}).get("config")
        if not isinstance(raw, str):
            return []  # the CRD schema already failed
        problems = ["spec.config: " + p for p in self.binary_check("cni", raw)]
        try:
            conf = json.loads(raw)
        except ValueError:
            return problems
        if not isinstance(conf, dict):
            return problems
        # Cross references to the node network config, per portgroup entry.
        entries = [("spec.config.", conf)]
        if isinstance(conf.get("plugins"), list):
            entries = [("spec.config.plugins.%d." % i, p) for i, p in enumerate(conf["plugins"])
                       if isinstance(p, dict) and p.get("type") == "portgroup"]
        cfg = self.node_config()
        pgs = {p.get("name"): p for p in (cfg or {}).get("portgroups") or [] if isinstance(p, dict)}
        for where, entry in entries:
            pg_name = entry.get("portgroup")
            if not isinstance(pg_name, str):
                continue
            if pg_name not in pgs:
                problems.append("%sportgroup: %r is not in the node network config (ConfigMap config.json)"
                                % (where, pg_name))
                continue
            pg_mtu, mtu = pgs[pg_name].get("mtu"), entry.get("mtu")
            if isinstance(pg_mtu, int) and isinstance(mtu, int) and mtu > pg_mtu:
                problems.append("%smtu: %d is above portgroup %r's mtu %d" % (where, mtu, pg_name, pg_mtu))
        return problems

    # VirtualMachine: cross references inside the VM and to the NADs
    def check_virtualmachine(self, doc):
        problems = []
        vmi = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        devices = ((vmi.get("domain") or {}).get("devices")) or {}
        vm_ns = (doc.get("metadata") or {}).get("namespace", "default")

        def names(items, where):
            seen = []
            for i, it in enumerate(items or []):
                n = it.get("name") if isinstance(it, dict) else None
                if n in seen:
                    problems.append("%s.%d.name: duplicate %r" % (where, i, n))
                seen.append(n)
            return set(seen)

        base = "spec.template.spec."
        ifaces = names(devices.get("interfaces"), base + "domain.devices.interfaces")
        nets = names(vmi.get("networks"), base + "networks")
        disks = names(devices.get("disks"), base + "domain.devices.disks")
        vols = names(vmi.get("volumes"), base + "volumes")
        for n in sorted(ifaces - nets, key=str):
            problems.append("interface %r has no network of that name" % n)
        for n in sorted(nets - ifaces, key=str):
            problems.append("network %r has no interface of that name" % n)
        for n in sorted(disks - vols, key=str):
            problems.append("disk %r has no volume of that name" % n)
        macs = [i.get("macAddress") for i in devices.get("interfaces") or [] if isinstance(i, dict) and i.get("macAddress")]
        for m in set(macs):
            if macs.count(m) > 1:
                problems.append("macAddress %s used by more than one interface" % m)
        for i, net in enumerate(vmi.get("networks") or []):
            multus = (net or {}).get("multus") if isinstance(net, dict) else None
            if not isinstance(multus, dict) or not isinstance(multus.get("networkName"), str):
                continue
            ns, _, name = multus["networkName"].rpartition("/")
            ns = ns or vm_ns
            if not any(self.find("NetworkAttachmentDefinition", name=name, namespace=ns)):
                problems.append("%snetworks.%d.multus.networkName: no NetworkAttachmentDefinition %s/%s under manifests/"
                                % (base, i, ns, name))
        return problems

    # DaemonSet (and other pod templates): ServiceAccount and ConfigMap references
    def check_daemonset(self, doc):
        problems = []
        ns = (doc.get("metadata") or {}).get("namespace", "default")
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        sa = pod.get("serviceAccountName")
        if sa and not any(self.find("ServiceAccount", name=sa, namespace=ns)):
            problems.append("serviceAccountName: no ServiceAccount %s/%s under manifests/" % (ns, sa))
        for vol in pod.get("volumes") or []:
            cm = (vol.get("configMap") or {}).get("name") if isinstance(vol, dict) else None
            if cm and not any(self.find("ConfigMap", name=cm, namespace=ns)):
                problems.append("volume %r: no ConfigMap %s/%s under manifests/" % (vol.get("name"), ns, cm))
        return problems

    # ---------- the config schemas against the binaries ----------
    def config_examples(self, kind):
        """(origin, config) for every example of this kind the repository shows."""
        out = []
        schema = self.schema_json(CORPUS[kind][0])
        for i, ex in enumerate((schema or {}).get("examples") or []):
            out.append(("examples[%d]" % i, ex))
        repo = os.path.dirname(os.path.abspath(self.dir))
        for doc in ("README.md", os.path.join("docs", "DESIGN.md")):
            path = os.path.join(repo, doc)
            if not os.path.exists(path):
                continue
            with open(path) as f:
                text = f.read()
            for m in re.finditer(r"^[ \t]*```json[ \t]*\n(.*?)^[ \t]*```", text, re.M | re.S):
                line = text.count("\n", 0, m.start()) + 2
                try:
                    ex = json.loads(m.group(1))
                except ValueError:
                    continue  # the Rust example test names it
                if config_kind(ex) == kind:
                    out.append(("%s:%d" % (doc, line), ex))
        for path, d in self.docs:
            raw = None
            if kind == "node" and d.get("kind") == "ConfigMap":
                raw = (d.get("data") or {}).get("config.json")
            if kind == "cni" and d.get("kind") == "NetworkAttachmentDefinition":
                raw = (d.get("spec") or {}).get("config")
            try:
                ex = json.loads(raw) if isinstance(raw, str) else None
            except ValueError:
                ex = None
            # A manifest the binary refuses is reported on the manifest's own line.
            if config_kind(ex) == kind and "plugins" not in ex and not self.binary_check(kind, raw):
                out.append((os.path.relpath(path), ex))
        return out

    def schema_json(self, filename):
        try:
            with open(os.path.join(self.schema_dir, filename)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def check_config_schemas(self):
        for kind, (filename, base, structural, semantic) in sorted(CORPUS.items()):
            path = os.path.join(self.schema_dir, filename)
            validator = self.schema_validator(filename)
            if validator is None:
                self.report(path, "agreement with --check-config", ["schema missing"])
                continue
            problems = []
            examples = self.config_examples(kind)
            if len(examples) < 2:
                problems.append("found %d %s config examples, expected the schema's and the manifests'" % (len(examples), kind))
            for origin, ex in examples:
                for p in self.schema_errors(validator, ex):
                    problems.append("%s: valid example refused by the schema: %s" % (origin, p))
                for p in self.binary_check(kind, json.dumps(ex)):
                    problems.append("%s: example refused by %s: %s" % (origin, self.checkers[kind], p))
            for changes in [[]] + structural + semantic:
                doc = mutate(base, changes)
                text = json.dumps(doc)
                by_binary = self.binary_check(kind, text)
                by_schema = self.schema_errors(validator, doc)
                if not changes:
                    if by_binary or by_schema:
                        problems.append("corpus base %s refused: %s" % (text, short(by_binary + by_schema)))
                    continue
                if not by_binary:
                    problems.append("%s --check-config accepts broken %s" % (self.checkers[kind], short(text)))
                if changes in structural and not by_schema:
                    problems.append("schema accepts structurally broken %s (binary: %s)"
                                    % (short(text), short("; ".join(by_binary))))
            self.report(path, "agrees with --check-config: %d examples accepted, %d broken configs refused by both, %d by the binary alone"
                        % (len(examples), len(structural), len(semantic)), problems)

    # ---------- main ----------
    def run(self):
        if self.k8s_version not in kv.all_versions():
            print("FATAL kubernetes-validate %s has no schemas for Kubernetes %s (it has %s)"
                  % (kv.__version__, self.k8s_version, ", ".join(sorted(set(kv.all_versions())))))
            return 2
        self.check_schema_files()
        files = self.manifest_files()
        if not files:
            print("FAIL %s: no manifests found" % self.dir)
            return 1
        loaded = self.load(files)
        for path in files:
            docs = loaded[path]
            if docs and isinstance(docs[0], str):
                self.report(path, "YAML", docs)
                continue
            whats, problems = [], []
            for doc in docs:
                what, probs = self.validate_object(path, doc)
                whats.append(what)
                name = (doc.get("metadata") or {}).get("name")
                prefix = "%s/%s: " % (doc["kind"], name) if len(docs) > 1 else ""
                problems += [prefix + p for p in probs]
            self.report(path, "; ".join(whats), problems)
        self.check_config_schemas()
        return 1 if self.failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubernetes-version", "-k", default="1.30.0")
    ap.add_argument("--portgroupd", default=os.environ.get("PORTGROUPD", "target/debug/portgroupd"),
                    help="portgroupd binary, for --check-config (default: $PORTGROUPD, else %(default)s)")
    ap.add_argument("--plugin", default=os.environ.get("PORTGROUP_PLUGIN", "target/debug/portgroup"),
                    help="portgroup CNI plugin binary, for --check-config (default: $PORTGROUP_PLUGIN, else %(default)s)")
    ap.add_argument("manifests", nargs="?", default="manifests")
    args = ap.parse_args()
    for binary in (args.portgroupd, args.plugin):
        if not os.access(binary, os.X_OK):
            print("FATAL %s is not an executable: build it (cargo build --bins) or pass its path" % binary)
            return 2
    version = args.kubernetes_version.lstrip("v")
    if version.count(".") == 1:
        version += ".0"
    return Validator(os.path.normpath(args.manifests), version,
                     os.path.abspath(args.portgroupd), os.path.abspath(args.plugin)).run()


if __name__ == "__main__":
    sys.exit(main())
