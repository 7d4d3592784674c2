#!/usr/bin/env bash
# Builds small ext2/ext3/ext4 images from a generated tree as fuzzing seeds.
# Usage: images/make-fuzz-seeds.sh OUTDIR
set -euo pipefail
out=${1:?usage: $0 OUTDIR}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src/dir/sub"
echo hello > "$tmp/src/a"
head -c 5000 /dev/urandom > "$tmp/src/dir/b"
ln -s a "$tmp/src/link"
ln "$tmp/src/a" "$tmp/src/hard"
for i in $(seq 1 40); do echo "$i" > "$tmp/src/dir/sub/f$i"; done
i=0
for opts in "-t ext4 -O inline_data" "-t ext4 -O metadata_csum,64bit" "-t ext2" "-t ext3" "-t ext4 -O ^extents,^64bit"; do
  i=$((i + 1))
  truncate -s 512K "$out/seed$i.img"
  # shellcheck disable=SC2086
  mke2fs -q -F -b 1024 -N 64 $opts -d "$tmp/src" "$out/seed$i.img"
done
echo "seeds in $out"
