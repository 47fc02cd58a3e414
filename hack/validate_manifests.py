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
- The node network config (config.json in a ConfigMap): parses as JSON, matches
  schemas/portgroup-node-config.json, uplink set, portgroup names unique, VLANs
  in 1..4094 and unique, reservation MACs and IPs (bare or with prefix) valid and unique.
- Every NAD's spec.config: parses as JSON, type=portgroup, cniVersion and name
  set, exactly one of portgroup/bridge, matches schemas/portgroup-cni-config.json,
  and a named portgroup exists in the node network config.
- Cross references: namespaces, ServiceAccounts and ConfigMaps a pod template
  uses, VM interfaces <-> networks, disks <-> volumes, Multus networks -> NADs,
  files a kustomization.yaml lists (and `kubectl kustomize` if kubectl exists).
"""

import argparse
import ipaddress
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
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
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


class Validator:
    def __init__(self, manifests_dir, k8s_version):
        self.dir = manifests_dir
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
        return ["data.config.json: " + p for p in self.node_config_problems(data["config.json"])]

    def node_config(self):
        for d in self.find("ConfigMap"):
            raw = (d.get("data") or {}).get("config.json")
            if raw is not None:
                try:
                    return json.loads(raw)
                except ValueError:
                    return None
        return None

    def node_config_problems(self, raw):
        try:
            cfg = json.loads(raw)
        except ValueError as e:
            return ["not valid JSON: %s" % e]
        v = self.schema_validator(NODE_CONFIG_SCHEMA)
        problems = self.schema_errors(v, cfg) if v else ["schemas/%s missing" % NODE_CONFIG_SCHEMA]
        if not isinstance(cfg, dict):
            return problems or ["not a JSON object"]
        if not isinstance(cfg.get("uplink"), str) or not cfg.get("uplink"):
            problems.append("uplink: missing or empty")
        pgs = cfg.get("portgroups")
        if not isinstance(pgs, list):
            return problems + ["portgroups: missing or not a list"]
        names, vlans, macs, ips = {}, {}, {}, {}
        for i, pg in enumerate(pgs):
            if not isinstance(pg, dict):
                continue
            where = "portgroups.%d" % i
            name, vlan = pg.get("name"), pg.get("vlan")
            if not isinstance(name, str) or not DNS_LABEL.match(name):
                problems.append("%s.name: %r is not a DNS label" % (where, name))
            elif name in names:
                problems.append("%s.name: %r already used by portgroups.%d" % (where, name, names[name]))
            else:
                names[name] = i
            if not isinstance(vlan, int) or isinstance(vlan, bool) or not 1 <= vlan <= 4094:
                problems.append("%s.vlan: %r is not a VLAN ID in 1..4094" % (where, vlan))
            elif vlan in vlans:
                problems.append("%s.vlan: %d already used by portgroups.%d" % (where, vlan, vlans[vlan]))
            else:
                vlans[vlan] = i
            for j, res in enumerate(pg.get("reservations") or []):
                rwhere = "%s.reservations.%d" % (where, j)
                mac = res.get("mac") if isinstance(res, dict) else None
                if not isinstance(mac, str) or not MAC.match(mac):
                    problems.append("%s.mac: %r is not a MAC address" % (rwhere, mac))
                else:
                    norm = mac.lower().replace("-", ":")
                    if int(norm[:2], 16) & 1:
                        problems.append("%s.mac: %s is a multicast address" % (rwhere, mac))
                    if norm in macs:
                        problems.append("%s.mac: %s already reserved at %s" % (rwhere, mac, macs[norm]))
                    macs[norm] = rwhere
                for k, ip in enumerate((res.get("ips") or []) if isinstance(res, dict) else []):
                    # a bare address is the host address (/32, /128)
                    try:
                        addr = ipaddress.ip_interface(ip).ip
                    except ValueError:
                        problems.append("%s.ips.%d: %r is not an IP address (bare or with prefix)" % (rwhere, k, ip))
                        continue
                    if addr in ips:
                        problems.append("%s.ips.%d: %s already reserved at %s" % (rwhere, k, addr, ips[addr]))
                    ips[addr] = rwhere
        return problems

    # NetworkAttachmentDefinition: the CNI config string
    def check_networkattachmentdefinition(self, doc):
        raw = (doc.get("spec") or {}).get("config")
        if not isinstance(raw, str):
            return []  # the CRD schema already failed
        try:
            conf = json.loads(raw)
        except ValueError as e:
            return ["spec.config: not valid JSON: %s" % e]
        if not isinstance(conf, dict):
            return ["spec.config: not a JSON object"]
        problems = []
        if conf.get("type") != "portgroup":
            problems.append("spec.config.type: %r, expected \"portgroup\"" % conf.get("type"))
        for key in ("cniVersion", "name"):
            if not isinstance(conf.get(key), str) or not conf.get(key):
                problems.append("spec.config.%s: missing or empty" % key)
        if ("portgroup" in conf) == ("bridge" in conf):
            problems.append("spec.config: exactly one of \"portgroup\" and \"bridge\" is needed")
        v = self.schema_validator(CNI_CONFIG_SCHEMA)
        if v is None:
            problems.append("schemas/%s missing" % CNI_CONFIG_SCHEMA)
        else:
            # "oneOf" is the portgroup/bridge rule, already reported above
            problems += self.schema_errors(v, conf, "spec.config.", skip=("oneOf",))
        pg_name = conf.get("portgroup")
        if isinstance(pg_name, str):
            cfg = self.node_config()
            pgs = {p.get("name"): p for p in (cfg or {}).get("portgroups", []) if isinstance(p, dict)}
            if pg_name not in pgs:
                problems.append("spec.config.portgroup: %r is not in the node network config (ConfigMap config.json)" % pg_name)
            else:
                pg_mtu, mtu = pgs[pg_name].get("mtu"), conf.get("mtu")
                if isinstance(pg_mtu, int) and isinstance(mtu, int) and mtu > pg_mtu:
                    problems.append("spec.config.mtu: %d is above portgroup %r's mtu %d" % (mtu, pg_name, pg_mtu))
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
        return 1 if self.failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubernetes-version", "-k", default="1.30.0")
    ap.add_argument("manifests", nargs="?", default="manifests")
    args = ap.parse_args()
    version = args.kubernetes_version.lstrip("v")
    if version.count(".") == 1:
        version += ".0"
    return Validator(os.path.normpath(args.manifests), version).run()


if __name__ == "__main__":
    sys.exit(main())
