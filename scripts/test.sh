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
export PATH="$(python3 -m site --user-base)/bin:$PATH"
# pyenv installs console scripts behind shims that need a rehash.
if need pyenv; then pyenv rehash || true; fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
