#!/usr/bin/env python3
"""Structural checks of deploy/kubernetes that no schema can make (deploy/check.sh runs it).

    python3 deploy/check_manifests.py kustomizations
        every file a kustomization.yaml names exists, and every manifest beside it is
        either named or one of the UNLISTED templates
    python3 deploy/check_manifests.py rendered DIR RENDERED.yaml
        the output of `kubectl kustomize DIR`: the Deployment mounts the generated
        ConfigMap, that ConfigMap holds DIR's gateway.toml, admin.listen is reachable by
        the probes, the termination grace covers preStop + server.shutdown_grace, the
        image's user is the pod's, and every secret_file is a key of the Secret template
    python3 deploy/check_manifests.py overlay-toml BASE.toml OVERLAY.toml
        the two gateway.toml files differ only in [cache]
    python3 deploy/check_manifests.py dummy-secrets TEMPLATE.yaml DIR (dummy|placeholder)
        writes one file per key of the Secret template into DIR: 48 dummy bytes, or the
        template's own placeholder value

Exit 1 with one line per problem.
"""

import json
import os
import re
import sys
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(ROOT, "deploy", "kubernetes")
SECRET_TEMPLATE = os.path.join(K8S, "base", "secret.example.yaml")
DOCKERFILE = os.path.join(ROOT, "deploy", "docker", "Dockerfile")
# Manifests deliberately kept out of a kustomization (templates and CRD-based extras).
UNLISTED = {"secret.example.yaml"}

problems = []


def problem(msg):
    problems.append(msg)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def duration_seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not m:
        problem(f"cannot read duration {text!r}")
        return 0
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def kustomizations():
    for dirpath, _, files in os.walk(K8S):
        if "kustomization.yaml" not in files:
            continue
        k = load_all(os.path.join(dirpath, "kustomization.yaml"))[0]
        named = []
        for entry in k.get("resources", []):
            path = os.path.normpath(os.path.join(dirpath, entry))
            if os.path.isdir(path):
                if not os.path.isfile(os.path.join(path, "kustomization.yaml")):
                    problem(f"{dirpath}: resource {entry} is a directory without kustomization.yaml")
            elif not os.path.isfile(path):
                problem(f"{dirpath}: resource {entry} does not exist")
            named.append(os.path.basename(path))
        for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
            for entry in gen.get("files", []):
                path = os.path.join(dirpath, entry.split("=", 1)[-1])
                if not os.path.isfile(path):
                    problem(f"{dirpath}: generator {gen['name']} file {entry} does not exist")
        for patch in k.get("patches", []):
            if "path" in patch and not os.path.isfile(os.path.join(dirpath, patch["path"])):
                problem(f"{dirpath}: patch {patch['path']} does not exist")
        for f in files:
            if f.endswith(".yaml") and f != "kustomization.yaml" and f not in named and f not in UNLISTED:
                problem(f"{dirpath}: {f} is in no kustomization resources (add it, or to UNLISTED)")


def rendered(kdir, rendered_path):
    docs = load_all(rendered_path)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == "smh-gateway"]
    if len(deployments) != 1:
        problem(f"{kdir}: expected one Deployment smh-gateway, found {len(deployments)}")
        return
    dep = deployments[0]
    pod = dep["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "smh-gateway")
    volumes = {v["name"]: v for v in pod["volumes"]}

    # The generated ConfigMap is the one mounted, and it holds this directory's gateway.toml.
    cm_name = volumes["config"]["configMap"]["name"]
    cms = [c for c in by_kind.get("ConfigMap", []) if c["metadata"]["name"] == cm_name]
    if len(cms) != 1:
        problem(f"{kdir}: the Deployment mounts ConfigMap {cm_name}, which the render does not hold")
        return
    toml_text = cms[0]["data"]["gateway.toml"]
    with open(os.path.join(kdir, "gateway.toml")) as f:
        if f.read() != toml_text:
            problem(f"{kdir}: the rendered ConfigMap is not {kdir}/gateway.toml")
    config = tomllib.loads(toml_text)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    want_config = f"{mount['mountPath']}/gateway.toml"
    if container.get("args", [])[-1:] != [want_config]:
        problem(f"{kdir}: the container's --config is not {want_config}")

    # Probes and Prometheus reach the admin listener on the pod IP.
    admin = config.get("admin", {}).get("listen", "127.0.0.1:9090")
    host, port = admin.rsplit(":", 1)
    if host not in ("0.0.0.0", "[::]"):
        problem(f"{kdir}: admin.listen = {admin!r}: the kubelet's probes cannot reach it")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if ports.get("admin") != int(port):
        problem(f"{kdir}: containerPort admin {ports.get('admin')} is not admin.listen's port {port}")
    listen_port = config.get("server", {}).get("listen", "0.0.0.0:8080").rsplit(":", 1)[1]
    if ports.get("http") != int(listen_port):
        problem(f"{kdir}: containerPort http {ports.get('http')} is not server.listen's port {listen_port}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        if get["path"] != path or get["port"] != "admin":
            problem(f"{kdir}: {probe} is not GET {path} on the admin port")
    annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/port") != port:
        problem(f"{kdir}: prometheus.io/port is not admin.listen's port {port}")

    # The kubelet must not kill a pod that is still draining.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = duration_seconds(config.get("server", {}).get("shutdown_grace", "30s"))
    if pod["terminationGracePeriodSeconds"] <= pre_stop + grace:
        problem(
            f"{kdir}: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} "
            f"is not above preStop {pre_stop}s + server.shutdown_grace {grace}s"
        )

    # Hardening.
    sc = container["securityContext"]
    if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
            and sc.get("capabilities", {}).get("drop") == ["ALL"]):
        problem(f"{kdir}: container securityContext lost readOnlyRootFilesystem, "
                "allowPrivilegeEscalation: false or drop ALL")
    psc = pod["securityContext"]
    if not psc.get("runAsNonRoot") or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problem(f"{kdir}: pod securityContext lost runAsNonRoot or seccompProfile RuntimeDefault")
    with open(DOCKERFILE) as f:
        dockerfile = f.read()
    users = re.findall(r"^USER\s+(\d+)(?::(\d+))?\s*$", dockerfile, re.M)
    if not users or int(users[-1][0]) != psc.get("runAsUser"):
        problem(f"{kdir}: runAsUser {psc.get('runAsUser')} is not the Dockerfile's USER {users}")
    cmd = re.findall(r"^CMD\s+(\[.*\])\s*$", dockerfile, re.M)
    if not cmd or json.loads(cmd[-1]) != container.get("args"):
        problem(f"{kdir}: the container's args are not the Dockerfile's CMD {cmd}")

    # Every secret_file lives in the Secret's mount and is a key of the Secret template.
    secrets_mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")["mountPath"]
    template_keys = set(load_all(SECRET_TEMPLATE)[0]["stringData"])
    if volumes["secrets"]["secret"]["secretName"] != load_all(SECRET_TEMPLATE)[0]["metadata"]["name"]:
        problem(f"{kdir}: the mounted Secret is not the one secret.example.yaml describes")
    for i, key in enumerate(config.get("auth", {}).get("keys", [])):
        path = key.get("secret_file")
        if path is None:
            continue
        d, name = os.path.split(path)
        if d != secrets_mount or name not in template_keys:
            problem(f"{kdir}: auth.keys[{i}].secret_file {path} is no key of the Secret mounted at {secrets_mount}")

    # The Redis overlay: the cache URL names a Service of the render, at its port.
    cache = config.get("cache", {})
    if cache.get("backend") == "redis":
        m = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)", cache.get("redis_url", ""))
        services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
        if not m or m.group(1) not in services:
            problem(f"{kdir}: cache.redis_url {cache.get('redis_url')!r} names no Service of the render")
        elif int(m.group(2)) not in [p["port"] for p in services[m.group(1)]["spec"]["ports"]]:
            problem(f"{kdir}: Service {m.group(1)} has no port {m.group(2)}")
        hpa = by_kind["HorizontalPodAutoscaler"][0]
        if hpa["spec"]["minReplicas"] < 2:
            problem(f"{kdir}: a shared Redis is for several replicas, but minReplicas is {hpa['spec']['minReplicas']}")


def overlay_toml(base_path, overlay_path):
    with open(base_path, "rb") as f:
        base = tomllib.load(f)
    with open(overlay_path, "rb") as f:
        overlay = tomllib.load(f)
    base.pop("cache", None)
    overlay.pop("cache", None)
    if base != overlay:
        problem(f"{overlay_path} differs from {base_path} outside [cache]: make the same change in both")


def dummy_secrets(template, out_dir, kind):
    data = load_all(template)[0]["stringData"]
    os.makedirs(out_dir, exist_ok=True)
    for key, placeholder in data.items():
        value = "dummy-secret-for-ci-only-0123456789abcdefghijkl" if kind == "dummy" else placeholder
        with open(os.path.join(out_dir, key), "w") as f:
            f.write(value)


def main(argv):
    match argv:
        case ["kustomizations"]:
            kustomizations()
        case ["rendered", kdir, path]:
            rendered(kdir, path)
        case ["overlay-toml", base, overlay]:
            overlay_toml(base, overlay)
        case ["dummy-secrets", template, out_dir, ("dummy" | "placeholder") as kind]:
            dummy_secrets(template, out_dir, kind)
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    for p in problems:
        print(f"check_manifests: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
