# shellcheck shell=bash
# Sourced by the chart checks, the cluster suite and the fuzz runs: installs their tools under
# target/tools once.
#   helm v4.3.2 and v3.21.4  built from their Go modules (helm.sh/helm/v4, helm.sh/helm/v3): what
#                          users run (Helm 4, and the late Helm 3); $HELM is Helm 4, $HELM3 Helm 3
#   kubernetes-validate    from PyPI, in a venv
#   cel-python 0.5.0       from PyPI, in the same venv (the chart's admission policy expressions)
#   cargo-fuzz 0.13.2      from crates.io (the fuzz targets in fuzz/)
TOOLS=target/tools
HELM4_VERSION=v4.3.2
HELM3_VERSION=v3.21.4
HELM=$TOOLS/helm-$HELM4_VERSION/helm
HELM3=$TOOLS/helm-$HELM3_VERSION/helm
VENV=$TOOLS/venv

# build_helm MAJOR VERSION: helm from its Go module (no replace lines: `go install` builds it with
# its own go.mod), static, its version string set as its Makefile sets it. Helm 3 also takes the
# Kubernetes version its client-go module stands for (v0.36 -> 1.36) as the default for
# `.Capabilities.KubeVersion`; Helm 4 reads it from the binary's module information.
build_helm() {
  local major=$1 version=$2 bin=$TOOLS/helm-$2/helm ldflags
  if [ -x "$bin" ] && "$bin" version --template '{{.Version}}' 2>/dev/null | grep -qx "$version"; then
    return 0
  fi
  echo "tools: building helm $version (Go module helm.sh/helm/$major)" >&2
  ldflags="-s -w -X helm.sh/helm/$major/internal/version.version=$version"
  if [ "$major" = v3 ]; then
    for pkg in pkg/lint/rules pkg/chartutil; do
      ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=36"
    done
  fi
  mkdir -p "$TOOLS/helm-$version"
  GOBIN=$(cd "$TOOLS/helm-$version" && pwd) CGO_ENABLED=0 \
    go install -trimpath -ldflags "$ldflags" "helm.sh/helm/$major/cmd/helm@$version"
}

ensure_helm() {
  build_helm v4 "$HELM4_VERSION"
  build_helm v3 "$HELM3_VERSION"
}

ensure_kubernetes_validate() {
  if ! [ -x "$VENV/bin/kubernetes-validate" ]; then
    echo "tools: installing kubernetes-validate 1.37.0 (PyPI)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
  fi
}

ensure_cel_python() {
  ensure_kubernetes_validate
  if ! "$VENV/bin/python" -c 'import celpy' 2>/dev/null; then
    echo "tools: installing cel-python 0.5.0 (PyPI)" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check cel-python==0.5.0
  fi
}

# cargo-fuzz 0.13.2 from crates.io, used on the stable toolchain with `--sanitizer none`.
CARGO_FUZZ=$TOOLS/cargo/bin/cargo-fuzz
ensure_cargo_fuzz() {
  if ! [ -x "$CARGO_FUZZ" ] || ! "$CARGO_FUZZ" --version 2>/dev/null | grep -q ' 0\.13\.2$'; then
    echo "tools: installing cargo-fuzz 0.13.2 (crates.io)" >&2
    cargo install -q --locked --version 0.13.2 --root "$TOOLS/cargo" cargo-fuzz
  fi
}
