#!/usr/bin/env bash
# Runs every cargo-fuzz target under tests/fuzz for a fixed budget and prints, per target,
# the executions run and the crashes (panics), timeouts (hangs) and out-of-memory runs
# found. Not part of .ci/run: it needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz --locked`), and takes SECONDS x targets of wall time.
#
#   benches/fuzz.sh [TARGET...]          all targets (`cargo fuzz list`) by default
#   FUZZ_SECONDS=60                      budget per target
#   FUZZ_SANITIZER=none                  cargo-fuzz -s: none (default, fastest; cradle is
#                                        safe Rust, so panics are what we look for) or address
#
# Inputs found go to tests/fuzz/artifacts/TARGET/ (crash-*, timeout-*, oom-*): fix the
# bug, then keep the input under tests/fuzz/regressions/TARGET/ so `cargo test --test
# fuzz_replay` replays it. The working corpus grows under tests/fuzz/target/work/, so
# the committed seeds under tests/fuzz/corpus/ stay as they are. A dictionary of the
# format's tokens, tests/fuzz/dicts/TARGET.dict, is used when there is one.
# Exit status: 0 when nothing was found, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${FUZZ_SECONDS:-60}
san=${FUZZ_SANITIZER:-none}
fuzz=(cargo +nightly fuzz)
dir=tests/fuzz

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <("${fuzz[@]}" list --fuzz-dir "$dir")
fi
"${fuzz[@]}" build --fuzz-dir "$dir" -s "$san"

mkdir -p "$dir/target/logs"
found=0
printf '%-14s %6s %12s %8s %7s %8s %6s  %s\n' target seconds executions exec/s crashes timeouts ooms artifacts
for t in "${targets[@]}"; do
    work="$dir/target/work/$t"
    art="$dir/artifacts/$t"
    log="$dir/target/logs/$t.log"
    mkdir -p "$work" "$art"
    dict=()
    if [ -f "$dir/dicts/$t.dict" ]; then
        dict=(-dict="$dir/dicts/$t.dict")
    fi
    before=$(find "$art" -type f | sort)
    # -fork=1 with -ignore_*: keep fuzzing after a finding, so one run reports them all.
    "${fuzz[@]}" run --fuzz-dir "$dir" -s "$san" "$t" "$work" "$dir/corpus/$t" -- \
        -max_total_time="$secs" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 \
        -ignore_ooms=1 -timeout=10 -rss_limit_mb=2048 "${dict[@]}" >"$log" 2>&1 || true
    last=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1 || true)
    if [ -z "$last" ]; then
        echo "$t: no libFuzzer statistics; see $log" >&2
        found=1
        continue
    fi
    execs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$last")
    rate=$(sed -E 's/.*exec\/s: ([0-9]+).*/\1/' <<<"$last")
    IFS=/ read -r ooms timeouts crashes < <(sed -E 's/.*oom\/timeout\/crash: ([0-9]+\/[0-9]+\/[0-9]+).*/\1/' <<<"$last")
    new=$(comm -13 <(echo "$before") <(find "$art" -type f | sort) | grep -c . || true)
    printf '%-14s %6s %12s %8s %7s %8s %6s  %s\n' "$t" "$secs" "$execs" "$rate" "$crashes" "$timeouts" "$ooms" "$new new in $art"
    if [ "$crashes$timeouts$ooms" != "000" ]; then
        found=1
    fi
done
exit "$found"
