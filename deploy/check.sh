#!/usr/bin/env bash
# deploy/check.sh: the checks of the deployment kit (deploy/docker, deploy/kubernetes).
# .ci/run calls it after the tests; run it alone from anywhere:
#
#   bash deploy/check.sh [SMH_GATEWAY_BINARY]     (default: cargo build, target/debug)
#
# Needs yamllint, kubernetes-validate and hadolint on PATH (.ci/run pip-installs pinned
# versions), python3 with PyYAML (a dependency of kubernetes-validate), and, to render the
# kustomizations, `kubectl` (kubectl kustomize) or `kustomize`; without either, the
# rendered checks are skipped and say so. It cannot build the image or apply manifests:
# no Docker daemon or cluster is assumed.
#   1. yamllint --strict on deploy/**/*.yaml (config: .yamllint)
#   2. hadolint on deploy/docker/Dockerfile
#   3. every file each kustomization.yaml names exists, no manifest is forgotten
#   4. kubernetes-validate --strict on every manifest, for Kubernetes 1.30 (the first with
#      preStop sleep on by default) and for the validator's newest
#   5. kustomize renders of base and overlays: validated, then check_manifests.py
#      (ConfigMap wiring, probes vs admin.listen, grace vs preStop + shutdown_grace, ...)
#   6. smh-gateway check on every gateway.toml with dummy secret files: passes; with the
#      Secret template's placeholders: refused (exit 2)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '[%s] deploy: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
fail() { echo "deploy/check.sh: $*" >&2; exit 1; }

for tool in yamllint kubernetes-validate hadolint python3; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool not found (.ci/run installs it)"
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

K8S=deploy/kubernetes
MIN_K8S=1.30.0
manifests=()
while IFS= read -r f; do manifests+=("$f"); done < <(
    find "$K8S" -name '*.yaml' ! -name kustomization.yaml ! -path "$K8S/extras/*" | sort)
kdirs=()
while IFS= read -r f; do kdirs+=("$(dirname "$f")"); done < <(
    find "$K8S" -name kustomization.yaml | sort)
tomls=()
while IFS= read -r f; do tomls+=("$f"); done < <(find "$K8S" -name gateway.toml | sort)

step "yamllint $(yamllint --version | cut -d' ' -f2) --strict deploy/"
yamllint --strict deploy/

step "hadolint $(hadolint --version | grep -o '[0-9][0-9.]*' | head -1) deploy/docker/Dockerfile"
hadolint deploy/docker/Dockerfile

step "kustomization.yaml files name files that exist"
python3 deploy/check_manifests.py kustomizations

step "kubernetes-validate $(kubernetes-validate --version) --strict: ${#manifests[@]} manifests, k8s $MIN_K8S and newest"
kubernetes-validate --strict --quiet -k "$MIN_K8S" "${manifests[@]}"
kubernetes-validate --strict --quiet "${manifests[@]}"

if command -v kubectl >/dev/null 2>&1; then
    render=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
    render=(kustomize build)
else
    render=()
fi
if [ ${#render[@]} -gt 0 ]; then
    for dir in "${kdirs[@]}"; do
        out="$tmp/$(echo "$dir" | tr / _).yaml"
        step "${render[*]} $dir: validate and check the render"
        "${render[@]}" "$dir" >"$out"
        kubernetes-validate --strict --quiet -k "$MIN_K8S" "$out"
        kubernetes-validate --strict --quiet "$out"
        python3 deploy/check_manifests.py rendered "$dir" "$out"
    done
else
    step "SKIPPED: rendering the kustomizations (neither kubectl nor kustomize is installed)"
fi

for overlay in "${tomls[@]}"; do
    [ "$overlay" = "$K8S/base/gateway.toml" ] && continue
    step "$overlay differs from the base's only in [cache]"
    python3 deploy/check_manifests.py overlay-toml "$K8S/base/gateway.toml" "$overlay"
done

bin=${1:-}
if [ -z "$bin" ]; then
    cargo build --locked --quiet --bin smh-gateway
    bin=target/debug/smh-gateway
fi
python3 deploy/check_manifests.py dummy-secrets "$K8S/base/secret.example.yaml" "$tmp/dummy" dummy
python3 deploy/check_manifests.py dummy-secrets "$K8S/base/secret.example.yaml" "$tmp/placeholder" placeholder
for toml in "${tomls[@]}"; do
    step "smh-gateway check $toml (dummy secret files; the placeholders must be refused)"
    for kind in dummy placeholder; do
        # The pod's Secret mount, /etc/smh-gateway/secrets/, becomes the scratch directory.
        sed "s#/etc/smh-gateway/secrets/#$tmp/$kind/#g" "$toml" >"$tmp/gateway.toml"
        set +e
        "$bin" check --config "$tmp/gateway.toml" >"$tmp/check.out" 2>&1
        rc=$?
        set -e
        if [ "$kind" = dummy ] && [ $rc -ne 0 ]; then
            cat "$tmp/check.out" >&2
            fail "$toml: check failed with dummy secrets (exit $rc)"
        fi
        if [ "$kind" = placeholder ] && [ $rc -ne 2 ]; then
            cat "$tmp/check.out" >&2
            fail "$toml: check accepted the Secret template's placeholders (exit $rc, want 2)"
        fi
    done
done

step "deployment kit checks passed"
