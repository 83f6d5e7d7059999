#!/usr/bin/env bash
# A long fuzz run of one target, without sanitizers (the crate forbids unsafe code), on the
# committed corpus, so runs add up across machines and sessions; appends what it did to
# fuzz/LONG-RUNS.md (commit, target, executions, seconds, result).
#
#   scripts/fuzz-long.sh TARGET [SECONDS] [RUNS]   e.g. scripts/fuzz-long.sh ops 3600
#
# SECONDS (default 3600) and RUNS (default unlimited) bound the run, whichever comes first. New
# corpus entries land in fuzz/corpus/TARGET (commit them to keep the progress); a crash leaves
# its input in fuzz/artifacts/TARGET and the script exits non-zero.
#
# Pausing a run (kill -STOP, e.g. to measure something) for more than 20 minutes makes
# libFuzzer report the input it was running as a timeout (-timeout, 1,200 s by default, counts
# wall time): replay such an input (`fuzz/target/*/release/TARGET FILE`) before believing it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
target=${1:?usage: scripts/fuzz-long.sh TARGET [SECONDS] [RUNS]}
secs=${2:-3600}
runs=${3:--1}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
# ops: comparison tracing only in the store and the harness (see fuzz/Cargo.toml), not in redb,
# whose page arithmetic it slowed by about a quarter; the other targets trace every crate (file
# plants damage that redb's own checks must catch).
flags=()
[ "$target" = ops ] && flags=(--no-trace-compares)
cargo fuzz build -s none -O ${flags[@]+"${flags[@]}"} "$target" >&2
bin=$(ls -d target/*/release | head -1)/$target
mkdir -p "artifacts/$target"
log=$(mktemp)
start=$(date +%s)
set +e
"$bin" -max_total_time="$secs" -runs="$runs" -print_final_stats=1 \
  -artifact_prefix="artifacts/$target/" "corpus/$target" 2>&1 | tee "$log" | grep -E '^#[0-9]+.*(pulse|DONE)|ERROR|panicked' >&2
status=${PIPESTATUS[0]}
set -e
execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
# 72 is libFuzzer's exit code when interrupted (SIGINT): stopped early, nothing found.
case "$status" in
  0) result="no crash" ;;
  72) result="no crash (interrupted)"; status=0 ;;
  *) result="FAILED (exit $status, see artifacts/$target)" ;;
esac
line="| $(date -u +%Y-%m-%d) | $(git rev-parse --short HEAD) | $target | $execs | $(( $(date +%s) - start )) | $result |"
[ -f LONG-RUNS.md ] || printf '# Long fuzz runs\n\nAppended by `scripts/fuzz-long.sh`; executions add up across runs on the committed corpus.\n\n| date | commit | target | executions | seconds | result |\n|---|---|---|---:|---:|---|\n' > LONG-RUNS.md
echo "$line" >> LONG-RUNS.md
echo "$line"
rm -f "$log"
exit "$status"
