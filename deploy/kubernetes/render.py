#!/usr/bin/env python3
"""Render a kustomization in this directory tree without kustomize.

Usage: render.py [--json] DIR  >  manifests.yaml (or a JSON array)

CI has no kustomize binary, so the tests render deploy/kubernetes/base and
deploy/kubernetes/gpu with this script and validate the result against the
Kubernetes schemas. It implements exactly the kustomize features our
manifests use, with kustomize's semantics, and refuses anything else:

  resources           files, or directories holding a kustomization.yaml
  configMapGenerator  files/literals, behavior create|replace|merge, and the
                      content hash suffix (same hash as kustomize), with
                      references from pod templates renamed to match
  patches             strategic-merge patches from files (kind + name),
                      `$patch: delete` removing a resource
  images              newName / newTag / digest for matching containers

Where kubectl is installed, the test suite also compares this output with
`kubectl kustomize`.
"""

import copy
import hashlib
import json
import os
import sys

import yaml

KNOWN_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "configMapGenerator",
    "patches",
    "images",
}

# Strategic-merge keys for the lists our patches touch (from the Kubernetes
# API's patchMergeKey tags), by field name; `ports` depends on the kind.
# Other lists are replaced, as kustomize does.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
SERVICE_MERGE_KEYS = dict(MERGE_KEYS, ports="port")


class RenderError(Exception):
    pass


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def key_of(res):
    return (res.get("kind"), res.get("metadata", {}).get("name"))


def merge(base, patch, field=None, keys=MERGE_KEYS):
    """Strategic merge of `patch` into `base` (both plain YAML values). A
    null in the patch deletes the key, as in kustomize."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = merge(base[k], v, k, keys) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in keys:
        mk = keys[field]
        for item in base + patch:
            if not isinstance(item, dict) or mk not in item:
                raise RenderError(f"list {field!r}: an item has no merge key {mk!r}: {item}")
        out = [copy.deepcopy(x) for x in base]
        added = []
        for item in patch:
            for i, existing in enumerate(out):
                if existing[mk] == item[mk]:
                    out[i] = merge(existing, item, None, keys)
                    break
            else:
                added.append(copy.deepcopy(item))
        # kustomize puts the patch's new items first, in the patch's order.
        return added + out
    return copy.deepcopy(patch)


def configmap_hash(cm):
    """kustomize's name suffix: sha256 of a canonical JSON encoding. kustomize
    v5 encodes the ConfigMap with an empty name (checked against
    `kubectl kustomize`, kustomize v5.5.0)."""
    m = {"kind": "ConfigMap", "name": "", "data": cm.get("data", {})}
    if "immutable" in cm:
        m["immutable"] = cm["immutable"]
    if cm.get("binaryData"):
        m["binaryData"] = cm["binaryData"]
    # Go's json.Marshal: sorted keys, no spaces, HTML characters escaped.
    text = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def generate_configmap(root, gen):
    unknown = set(gen) - {"name", "files", "literals", "behavior"}
    if unknown:
        raise RenderError(f"{root}: configMapGenerator keys not supported: {sorted(unknown)}")
    data = {}
    for spec in gen.get("files", []):
        key, _, path = spec.rpartition("=")
        key = key or os.path.basename(path)
        full = os.path.abspath(os.path.join(root, path))
        if not full.startswith(os.path.abspath(root) + os.sep):
            raise RenderError(f"{root}: {path} is outside the kustomization directory")
        with open(full, encoding="utf-8") as f:
            data[key] = f.read()
    for lit in gen.get("literals", []):
        key, sep, value = lit.partition("=")
        if not sep:
            raise RenderError(f"{root}: literal {lit!r} has no '='")
        data[key] = value
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": gen["name"]},
        "data": data,
    }


def pod_specs(res):
    spec = res.get("spec", {})
    if res.get("kind") == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    tmpl = spec.get("template", {}).get("spec")
    return [tmpl] if tmpl else []


def set_images(resources, images, root):
    for img in images:
        unknown = set(img) - {"name", "newName", "newTag", "digest"}
        if unknown:
            raise RenderError(f"{root}: images keys not supported: {sorted(unknown)}")
        for res in resources:
            for spec in pod_specs(res):
                for c in spec.get("containers", []) + spec.get("initContainers", []):
                    name, tag = c["image"], None
                    if "@" in name:
                        name = name.split("@", 1)[0]
                    elif ":" in name.rsplit("/", 1)[-1]:
                        name, tag = name.rsplit(":", 1)
                    if name != img["name"]:
                        continue
                    new = img.get("newName", name)
                    if "digest" in img:
                        new += "@" + img["digest"]
                    elif "newTag" in img:
                        new += ":" + str(img["newTag"])
                    elif tag:
                        new += ":" + tag
                    c["image"] = new


def render_dir(root):
    """Returns (resources, generated ConfigMap names) for one kustomization."""
    kfile = os.path.join(root, "kustomization.yaml")
    if not os.path.exists(kfile):
        raise RenderError(f"{root}: no kustomization.yaml")
    (k,) = load_docs(kfile)
    unknown = set(k) - KNOWN_KEYS
    if unknown:
        raise RenderError(f"{kfile}: keys this renderer does not implement: {sorted(unknown)}")
    resources, generated = [], set()
    for entry in k.get("resources", []):
        path = os.path.join(root, entry)
        if os.path.isdir(path):
            sub, sub_generated = render_dir(path)
            resources += sub
            generated |= sub_generated
        else:
            resources += load_docs(path)
    for gen in k.get("configMapGenerator", []):
        cm = generate_configmap(root, gen)
        behavior = gen.get("behavior", "create")
        target = next((r for r in resources if key_of(r) == key_of(cm)), None)
        if behavior == "create":
            if target is not None:
                raise RenderError(f"{kfile}: ConfigMap {gen['name']} already exists")
            resources.append(cm)
            generated.add(gen["name"])
        elif behavior in ("replace", "merge"):
            if target is None or gen["name"] not in generated:
                raise RenderError(f"{kfile}: no generated ConfigMap {gen['name']} to {behavior}")
            if behavior == "replace":
                target["data"] = cm["data"]
            else:
                target.setdefault("data", {}).update(cm["data"])
        else:
            raise RenderError(f"{kfile}: unknown behavior {behavior!r}")
    for p in k.get("patches", []):
        if set(p) != {"path"}:
            raise RenderError(f"{kfile}: only file patches are supported: {p}")
        for doc in load_docs(os.path.join(root, p["path"])):
            idx = next((i for i, r in enumerate(resources) if key_of(r) == key_of(doc)), None)
            if idx is None:
                raise RenderError(f"{kfile}: patch target {key_of(doc)} not found")
            if doc.get("$patch") == "delete":
                del resources[idx]
            elif "$patch" in doc:
                raise RenderError(f"{kfile}: $patch: {doc['$patch']} is not supported")
            else:
                keys = SERVICE_MERGE_KEYS if doc.get("kind") == "Service" else MERGE_KEYS
                resources[idx] = merge(resources[idx], doc, None, keys)
    set_images(resources, k.get("images", []), kfile)
    return resources, generated


def rename_configmaps(resources, generated):
    names = {}
    for r in resources:
        if r["kind"] == "ConfigMap" and r["metadata"]["name"] in generated:
            old = r["metadata"]["name"]
            r["metadata"]["name"] = f"{old}-{configmap_hash(r)}"
            names[old] = r["metadata"]["name"]
    for r in resources:
        for spec in pod_specs(r):
            for v in spec.get("volumes", []):
                refs = [v.get("configMap", {})]
                refs += [src.get("configMap", {}) for src in v.get("projected", {}).get("sources", [])]
                for ref in refs:
                    if ref.get("name") in names:
                        ref["name"] = names[ref["name"]]
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                for ef in c.get("envFrom", []):
                    ref = ef.get("configMapRef", {})
                    if ref.get("name") in names:
                        ref["name"] = names[ref["name"]]
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("configMapKeyRef", {})
                    if ref.get("name") in names:
                        ref["name"] = names[ref["name"]]


def render(root):
    resources, generated = render_dir(root)
    rename_configmaps(resources, generated)
    return resources


def main(argv):
    args = argv[1:]
    as_json = bool(args) and args[0] == "--json"
    if as_json:
        args = args[1:]
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        resources = render(args[0])
    except (RenderError, OSError, yaml.YAMLError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    if as_json:
        json.dump(resources, sys.stdout, indent=1)
    else:
        yaml.safe_dump_all(resources, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
