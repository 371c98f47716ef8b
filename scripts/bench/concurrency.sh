#!/usr/bin/env bash
# Throughput, tail latency and server memory against the number of concurrent clients
# (BENCHMARKS.md, "Throughput vs concurrency"). Serves the shipped models (models/) from a
# release build, sends one phantom CT with its vertebrae's body boxes with `fracmap load` in a
# closed loop at each concurrency, and reads the server's peak resident memory.
#
#   bash scripts/bench/concurrency.sh [SECONDS_PER_LEVEL] [SESSIONS] [QUEUE]
#
# QUEUE 64 (the default) lets every client wait: the table shows queueing latency. The
# server's default, 8, refuses the clients past it at once (RESOURCE_EXHAUSTED): the table
# shows how that bounds the latency of those it serves.
# Writes target/bench/concurrency_q<QUEUE>.md (and one JSON report per level beside it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
seconds="${1:-20}"
sessions="${2:-1}"
queue="${3:-64}"
levels="1 2 4 8 16 64"
out="target/bench/concurrency_q$queue"
mkdir -p "$out"

cargo build --release --locked -p fracmap-server -p fracmap-client
bin=target/release

# The demo's phantom set, generated once; its first case with a fracture is the request.
data=target/bench/concurrency_data
if [ ! -f "$data/manifest.json" ]; then
  cargo build --release --locked -p fracmap-trainer
  "$bin/fracmap-train" synth --out "$data" --cases 6 --normal-only 2 --unlabeled 1 --seed 7 --folds 3
fi
read -r ct boxes < <(.venv/bin/python - "$data/manifest.json" <<'PY'
import json, sys
cases = json.load(open(sys.argv[1]))["cases"]
case = next(c for c in cases if any(v["status"] != "normal" for v in c["vertebrae"]))
span = lambda b, a: f"{b[a][0]}:{b[a][1]}"
print(case["ct"], " ".join(f"--box={v['level']}={span(v['body_box'], 'z')},{span(v['body_box'], 'y')},{span(v['body_box'], 'x')}"
                           for v in case["vertebrae"]))
PY
)

port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/fracmap-server" --listen "127.0.0.1:$port" --device cpu --models models --sessions "$sessions" \
  --queue "$queue" > "$out/server.log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  "$bin/fracmap" info --server "http://127.0.0.1:$port" --connect-timeout 1 > /dev/null 2>&1 && break
  sleep 0.2
done

rss_mib() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$server_pid/status"; }
hwm_mib() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$server_pid/status"; }
idle=$(rss_mib)
{
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg) at the start."
  echo "Commit $(git rev-parse --short HEAD); server: release build, CPU, $sessions session(s) per model, queue $queue; ${seconds} s per level, closed loop, one connection per client."
  echo "CT: $ct ($(stat -c %s "$data/$ct") bytes as .nii.gz), $(echo "$boxes" | wc -w) vertebrae. Server resident memory when idle: $idle MiB."
  echo
  echo "| clients | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | server peak RSS MiB |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} > "$out.md"
for clients in $levels; do
  # shellcheck disable=SC2086 # the boxes are separate arguments
  "$bin/fracmap" load --server "http://127.0.0.1:$port" --input "$data/$ct" $boxes \
    --concurrency "$clients" --duration "$seconds" --warmup 2 --json "$out/c$clients.json" > /dev/null 2> "$out/c$clients.log" || true
  .venv/bin/python - "$out/c$clients.json" "$clients" "$(hwm_mib)" >> "$out.md" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency_ms"] or {}
errors = ", ".join(f"{code} {n}" for code, n in r["errors"].items()) or "0"
fmt = lambda v: f"{v:.0f}" if isinstance(v, (int, float)) else "-"
print(f"| {sys.argv[2]} | {r['requests']['ok']} | {r['throughput']['requests_per_s']:.2f} | {fmt(lat.get('p50'))} "
      f"| {fmt(lat.get('p90'))} | {fmt(lat.get('p99'))} | {fmt(lat.get('max'))} | {errors} | {sys.argv[3]} |")
PY
done
kill -TERM "$server_pid"
wait "$server_pid" || true
trap - EXIT
cat "$out.md"
