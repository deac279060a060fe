#!/usr/bin/env bash
# Installs (idempotently) what the tests need, then runs the whole suite:
# formatting, clippy, unit/integration/interop tests, the x509-limbo harness and the fuzz smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

# Test peers: openssl (system), pkilint (PyPI).
if ! need openssl; then
  echo "installing openssl" >&2
  if need sudo; then sudo apt-get update -qq && sudo apt-get install -y -qq openssl; else apt-get update -qq && apt-get install -y -qq openssl; fi
fi
if ! need lint_pkix_cert || ! need lint_crl; then
  echo "installing pkilint" >&2
  if [ "$(id -u)" = 0 ]; then
    python3 -m pip install --quiet --disable-pip-version-check 'pkilint==0.13.3'
  else
    python3 -m pip install --quiet --disable-pip-version-check --user 'pkilint==0.13.3'
  fi
fi
# Gateway interop peers (crates/mtls-cli/tests/gateway_interop.rs): Python requests and sslyze
# (PyPI, sslyze pinned: the test reads its JSON layout), Node.js with axios (npm, tests/node).
pip_install() {
  if [ "$(id -u)" = 0 ]; then
    python3 -m pip install --quiet --disable-pip-version-check "$@"
  else
    python3 -m pip install --quiet --disable-pip-version-check --user "$@"
  fi
}
if ! python3 -c 'import requests' >/dev/null 2>&1; then
  echo "installing requests" >&2
  pip_install requests
fi
# The Prometheus project's Python parser checks every /metrics page in the tests.
if ! python3 -c 'import prometheus_client.parser' >/dev/null 2>&1; then
  echo "installing prometheus-client" >&2
  pip_install 'prometheus-client==0.26.0'
fi
# `mtls doctor --json` is validated against docs/doctor.schema.json.
if ! python3 -c 'import jsonschema' >/dev/null 2>&1; then
  echo "installing jsonschema" >&2
  pip_install 'jsonschema==4.26.0'
fi
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("sslyze"))' 2>/dev/null)" != "6.3.1" ]; then
  echo "installing sslyze" >&2
  pip_install 'sslyze==6.3.1'
fi
if ! need node || ! need npm; then
  echo "installing nodejs" >&2
  if need sudo; then sudo apt-get update -qq && sudo apt-get install -y -qq nodejs npm; else apt-get update -qq && apt-get install -y -qq nodejs npm; fi
fi
# Browser test peers (crates/mtls-cli/tests/browser.rs): Debian's Chromium and the NSS tools
# (certutil, pk12util) that fill its certificate database.
if ! need chromium || ! need certutil || ! need pk12util; then
  echo "installing chromium and libnss3-tools" >&2
  if need sudo; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium libnss3-tools; else apt-get update -qq && apt-get install -y -qq chromium libnss3-tools; fi
fi
# promtool (Debian's prometheus package) checks the shipped alert rules and their unit tests.
if ! need promtool; then
  echo "installing prometheus (promtool)" >&2
  if need sudo; then sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends prometheus; else apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; fi
fi
if [ ! -d tests/node/node_modules ]; then
  echo "installing tests/node (npm ci)" >&2
  (cd tests/node && npm ci --no-audit --no-fund)
fi
# PostgreSQL for the online-CA tests: a throwaway cluster on 127.0.0.1, run as a non-root user.
eval "$(bash scripts/pg.sh)"
export MTLS_TEST_POSTGRES_URL
export PATH="$(python3 -m site --user-base)/bin:$PATH"
# pyenv installs console scripts behind shims that need a rehash.
if need pyenv; then pyenv rehash || true; fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
cargo test --workspace --locked
