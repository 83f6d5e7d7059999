#!/usr/bin/env bash
# Runs the peer benchmark suite (benches/peers.rs) and prints one markdown table of figures and
# ratios against each peer measured in the same run, with the machine, the versions, the settings
# and the targets of issue 4 (PASS/MISS).
#
#   scripts/bench-table.sh            quick mode: the main table, 5-7 minutes on 2 cores
#   scripts/bench-table.sh --scale    also 10 M live keys in the scale group (a few minutes more)
#   scripts/bench-table.sh --full     the whole matrix (threads 1-256 x workloads x 0 / 1 M keys)
#   scripts/bench-table.sh -- FILTER  extra arguments go to criterion (e.g. a filter)
#
# Installs redis-server from Debian when it is missing (as root); if that fails the Redis rows say
# "unavailable" with the reason. The raw run log, results.csv and table.md are kept in
# $CARGO_TARGET_DIR/idemstore-bench (default target/idemstore-bench).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=1
scale=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale=1 ;;
    --full) quick=0 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server missing: installing it from Debian ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y redis-server >/dev/null 2>&1; then
    apt-get update >/dev/null 2>&1 || true
    apt-get install -y redis-server >/dev/null 2>&1 \
      || echo "could not install redis-server: the Redis rows will say unavailable" >&2
  fi
fi

target="${CARGO_TARGET_DIR:-target}"
out="$target/idemstore-bench"
mkdir -p "$out"
log="$out/run.log"
rm -f "$out/table.md"

export IDEMSTORE_BENCH_OUT="$out"
[ "$quick" = 1 ] && export IDEMSTORE_BENCH_QUICK=1
[ "$scale" = 1 ] && export IDEMSTORE_BENCH_SCALE=1
run=(cargo bench --features peers --bench peers)
[ ${#extra[@]} -gt 0 ] && run+=(-- "${extra[@]}")
cmd="${run[*]}"
env_shown=$(env | grep -E '^IDEMSTORE_BENCH_(QUICK|SCALE|LIVE|THREADS|ENGINES|WORKLOADS|LATENCY_SECS)=' | sort | tr '\n' ' ' || true)

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)
echo "running: ${env_shown}${cmd} (log: $log) ..." >&2
if ! "${run[@]}" >"$log" 2>&1; then
  echo "the benchmark run failed; the end of its log:" >&2
  tail -40 "$log" >&2
  exit 1
fi
elapsed=$(( $(date +%s) - start ))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

if [ ! -s "$out/table.md" ]; then
  echo "the run wrote no table (a filter that matched nothing?); log: $log" >&2
  exit 1
fi

tmpdir="${IDEMSTORE_BENCH_DIR:-${TMPDIR:-/tmp}}"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo "?")
mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
fs=$(df -T "$tmpdir" | awk 'NR == 2 { print $2 " (" $1 ")" }')
redb=$(grep -A1 '^name = "redb"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
rev=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " + uncommitted changes" || true)

echo "### idemstore against its peers, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "Reproduce: \`scripts/bench-table.sh$([ "$scale" = 1 ] && echo " --scale")$([ "$quick" = 0 ] && echo " --full")\` (runs \`${env_shown}${cmd}\`; took ${elapsed} s)."
echo
echo "- machine: $(nproc) cores ($cpu), $mem RAM, kernel $(uname -r); temp dir $tmpdir on $fs; load average $load_start at the start, $load_end at the end (the machine is shared: figures are noisy, ratios within one run are what counts)"
echo "- versions: idemstore $rev$dirty; $(rustc --version); redb $redb"
cat "$out/table.md"
