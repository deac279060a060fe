#!/usr/bin/env bash
# Benchmarks `mtls gateway` with the shared load harness (../shared/bench, or $BENCH_DIR), next to
# nginx and haproxy doing the same mTLS reverse-proxy job on this machine, and writes the
# side-by-side table to docs/benchmarks-gateway.md.
#
#   bash scripts/bench-gateway.sh            # full: peer baselines (if missing) + 3 runs
#   QUICK=1 bash scripts/bench-gateway.sh    # smoke run
#
# Needs: nginx-light haproxy (apt), taskset, ss. Loopback only; the gateway runs pinned to CPU 0,
# the load generator and the origin on CPU 1 (see the harness README).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$(cd "${BENCH_DIR:-../shared/bench}" && pwd)
export PERF_DIR=${PERF_DIR:-/tmp/mtls-bench}
P=$PERF_DIR
RUNS=${RUNS:-3}
RES=$P/results; [ "${QUICK:-0}" = 1 ] && RES=$P/results/quick
PORT=${PORT:-19443}

cargo build --release --locked -p mtls-cli
MTLS=$ROOT/target/release/mtls
[ -s "$P/pki/ca.pem" ] || "$BENCH/gen_certs.sh" "$P/pki" ec
# mtls refuses private keys other users can read.
chmod 600 "$P"/pki/*.key
if [ ! -e "$RES/peers/nginx-proxy.json" ]; then
  if [ "${QUICK:-0}" = 1 ]; then (cd "$BENCH" && QUICK=1 ./run_all.sh "" 1); else (cd "$BENCH" && ./run_all.sh); fi
fi

start_gateway() { # CPUS
  taskset -c "$1" "$MTLS" gateway --listen 127.0.0.1:$PORT \
    --cert "$P/pki/server.pem" --key "$P/pki/server.key" --client-ca "$P/pki/ca.pem" \
    --upstream http://127.0.0.1:18080 --allow-any-trusted --no-access-log 2>"$P/run/mtls-gateway.log" &
  GW=$!
  for _ in $(seq 50); do ss -Hltn "( sport = :$PORT )" | grep -q . && return 0; sleep 0.1; done
  echo "gateway did not start" >&2; cat "$P/run/mtls-gateway.log" >&2; exit 1
}

mkdir -p "$P/run"
# Keep the origin up for both measurements (compare_target.sh stops only an origin it started).
"$BENCH/peers.sh" setup >/dev/null
ss -Hltn "( sport = :18080 )" | grep -q . || "$BENCH/peers.sh" start origin 1
start_gateway 0
trap 'kill $GW 2>/dev/null || true; "$BENCH/peers.sh" stop origin >/dev/null 2>&1 || true' EXIT
"$BENCH/compare_target.sh" mtls-gateway $PORT $GW "$RUNS"
kill $GW; wait $GW 2>/dev/null || true

# Scaling: full handshakes/s with the gateway allowed both cores (the load generator shares CPU 1,
# so this understates a real 2-core server).
start_gateway 0,1
OUT2=$RES/target-mtls-gateway-2core
mkdir -p "$OUT2"
EXTRA=(); [ "${QUICK:-0}" = 1 ] && EXTRA=(--hs-duration 2 --retries 0 --max-wait 20)
MTLSBENCH=${MTLSBENCH:-$P/target/release/mtlsbench} timeout 900 python3 "$BENCH/mtls_compare.py" \
  --name mtls-gateway-2core --ca "$P/pki/ca.pem" --cert "$P/pki/client.pem" --key "$P/pki/client.key" \
  --client-cpu 1 --server-pid $GW --port $PORT --runs "$RUNS" --only hs "${EXTRA[@]}" --out "$OUT2" | tail -5
kill $GW; wait $GW 2>/dev/null || true

# The same harness against a trivial application on mtls-axum (it answers / itself, like the
# nginx and haproxy rows), to compare the application server with the gateway.
cargo build --release --locked -p mtls-examples --bin bench_app
APP_PORT=$((PORT + 1))
LISTEN=127.0.0.1:$APP_PORT CERT="$P/pki/server.pem" KEY="$P/pki/server.key" CA="$P/pki/ca.pem" \
  taskset -c 0 "$ROOT/target/release/bench_app" >"$P/run/bench-app.log" 2>&1 &
APP=$!
for _ in $(seq 50); do ss -Hltn "( sport = :$APP_PORT )" | grep -q . && break; sleep 0.1; done
trap 'kill $APP 2>/dev/null || true; "$BENCH/peers.sh" stop origin >/dev/null 2>&1 || true' EXIT
"$BENCH/compare_target.sh" mtls-axum-app $APP_PORT $APP "$RUNS"
kill $APP; wait $APP 2>/dev/null || true

# The ceiling of the proxy path: the gateway's stack and upstream pool with none of its work
# (examples/src/bin/bench_proxy.rs), in front of the same origin.
cargo build --release --locked -p mtls-examples --bin bench_proxy
CEIL_PORT=$((PORT + 2))
LISTEN=127.0.0.1:$CEIL_PORT CERT="$P/pki/server.pem" KEY="$P/pki/server.key" CA="$P/pki/ca.pem" UPSTREAM=127.0.0.1:18080 \
  taskset -c 0 "$ROOT/target/release/bench_proxy" >"$P/run/bench-proxy.log" 2>&1 &
CEIL=$!
for _ in $(seq 50); do ss -Hltn "( sport = :$CEIL_PORT )" | grep -q . && break; sleep 0.1; done
trap 'kill $CEIL 2>/dev/null || true; "$BENCH/peers.sh" stop origin >/dev/null 2>&1 || true' EXIT
"$BENCH/compare_target.sh" mtls-proxy-ceiling $CEIL_PORT $CEIL "$RUNS"
kill $CEIL; wait $CEIL 2>/dev/null || true

{
  echo "# Gateway benchmark"
  echo
  echo "Measured with \`scripts/bench-gateway.sh\` ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m)) using the"
  echo "shared harness: gateway pinned to CPU 0, load generator and plain-HTTP origin on CPU 1,"
  echo "TLS 1.3 + X25519, P-256 certificates. nginx 1.22 and haproxy link OpenSSL 3.0 (Debian 12)."
  echo
  cat "$RES/target-mtls-gateway/side_by_side.md"
  echo
  echo "A trivial application on \`mtls-axum\` (examples/src/bin/bench_app.rs, answers / itself), same harness:"
  echo
  cat "$RES/target-mtls-axum-app/side_by_side.md"
  echo
  echo "The ceiling of the proxy path (examples/src/bin/bench_proxy.rs: the gateway's stack and upstream pool, no policy, headers, metrics or log):"
  echo
  cat "$RES/target-mtls-proxy-ceiling/side_by_side.md"
  echo
  echo "Two cores (gateway on CPUs 0-1, load generator also on CPU 1), full handshakes:"
  echo
  echo '```'
  python3 - "$OUT2" <<'PY'
import json, sys, glob
for f in glob.glob(sys.argv[1] + "/*.json"):
    d = json.load(open(f))
    for run in d.get("hs", {}).get("runs", []):
        print(f"full mTLS handshakes/s: {run.get('rate')} (ok {run.get('ok')}, bad status {run.get('bad_status')}, errors {run.get('err')})")
PY
  echo '```'
  echo
  echo "Analysis (ceiling, profiles, before/after): [benchmarks-gateway-analysis.md](benchmarks-gateway-analysis.md)."
} > "$ROOT/docs/benchmarks-gateway.md"
echo "wrote docs/benchmarks-gateway.md"
