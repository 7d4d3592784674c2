#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on the stable
# toolchain (the -C flags below are what `cargo fuzz` passes, minus the nightly-only
# sanitizer) and runs each one briefly from real seed images. Any crash, hang or
# out-of-memory fails the run and leaves the input under fuzz/artifacts/.
# The runs use a fixed seed, a fixed number of inputs and seeds made the same way each
# time, so a given tree passes or fails the same way every time (CI stays
# reproducible); FUZZ_SEED=N explores anew. The seeds are byte-identical run to run
# but for the times stamped by tools that take no fixed time: the NTFS seeds (mkntfs,
# ntfs-3g) and the commit blocks of the two journal seeds (debugfs).
# Usage: fuzz/brief.sh [SCALE]   (default 1: ~30 s per target here)
# For long runs with AddressSanitizer use `cargo +nightly fuzz run TARGET` instead.
set -euo pipefail
scale=${1:-1}
seed=${FUZZ_SEED:-1}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps these flags off build scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --quiet --bins --target "$host"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
../images/make-fuzz-seeds.sh "$work/seeds" > "$work/seeds.log" 2>&1 || {
  cat "$work/seeds.log"
  exit 1
}
mkdir -p artifacts "$work/ext" "$work/ntfs" "$work/disk"
cp "$work"/seeds/seed*.img "$work/ext/"
cp "$work"/seeds/disk-*.img "$work/disk/" 2> /dev/null || echo "fuzz: no disk seeds (needs sfdisk); disk starts from nothing"
cp "$work"/seeds/ntfs-*.img "$work/ntfs/" 2> /dev/null || echo "fuzz: no NTFS seeds (needs root and ntfs-3g); ntfs_tree starts from nothing"
for t in ext_tree:60000 ntfs_tree:5000 disk:20000; do
  runs=$((${t#*:} * scale))
  t=${t%:*}
  corpus="$work/${t%_tree}"
  echo "fuzz: $t, $runs inputs (seed $seed) from $(ls "$corpus" | wc -l) seed image(s)"
  # -max_len: the seeds are whole images (up to 3 MiB); -timeout: a walk of any
  # input must end in seconds (a hang is a bug); -rss_limit_mb: bounded memory;
  # -max_total_time: a ceiling for slow machines (ext_tree's 60 000 inputs took close
  # to 120 s on CI's kind of machine, once past it: a run cut short by the clock is no
  # longer the same run each time).
  "./target/$host/release/$t" "$corpus" -seed="$seed" -runs="$runs" -max_len=3145728 \
    -timeout=20 -rss_limit_mb=2048 -max_total_time=$((240 * scale)) \
    -artifact_prefix=artifacts/ -print_final_stats=1 2> "$work/$t.log" || {
    tail -40 "$work/$t.log"
    echo "fuzz: $t failed; the input is in fuzz/artifacts/"
    exit 1
  }
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$work/$t.log" | sed "s/^/fuzz: $t /"
done
