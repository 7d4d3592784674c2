#!/usr/bin/env bash
# Builds small ext2/ext3/ext4 images (and, as root with ntfs-3g, NTFS images) from a
# generated tree as fuzzing seeds.
# Usage: images/make-fuzz-seeds.sh OUTDIR
set -euo pipefail
out=${1:?usage: $0 OUTDIR}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src/dir/sub"
echo hello > "$tmp/src/a"
# Same bytes, ids and times every run, so fuzzing from these seeds is repeatable.
head -c 5000 < <(yes 'fuzzing seed 0123456789') > "$tmp/src/dir/b"
ln -s a "$tmp/src/link"
ln "$tmp/src/a" "$tmp/src/hard"
for i in $(seq 1 40); do echo "$i" > "$tmp/src/dir/sub/f$i"; done
find "$tmp/src" -exec touch -h -d @1700000000 {} +
export E2FSPROGS_FAKE_TIME=1700000000
i=0
for opts in "-t ext4 -O inline_data" "-t ext4 -O metadata_csum,64bit" "-t ext2" "-t ext3" "-t ext4 -O ^extents,^64bit"; do
  i=$((i + 1))
  truncate -s 512K "$out/seed$i.img"
  # shellcheck disable=SC2086
  mke2fs -q -F -b 1024 -N 64 -U 6d2d8e3c-0f4b-4b1e-9a57-2f0c4c9b1a01 \
    -E hash_seed=1f6a4c2e-3b5d-4e7f-8091-a2b3c4d5e6f7 $opts -d "$tmp/src" "$out/seed$i.img"
done
if [ "$(id -u)" = 0 ] && command -v mkntfs > /dev/null && command -v ntfs-3g > /dev/null; then
  for geo in "512 512" "512 4096" "4096 4096"; do
    set -- $geo
    img="$out/ntfs-$1-$2.img"
    truncate -s 2M "$img"
    mkntfs -F -q -Q -s "$1" -c "$2" "$img" > /dev/null 2>&1
    mkdir -p "$tmp/m"
    ntfs-3g -o streams_interface=windows "$img" "$tmp/m"
    cp -a "$tmp/src/." "$tmp/m/"
    echo side > "$tmp/m/a:stream"
    mkdir "$tmp/m/c" && setfattr -n system.ntfs_attrib_be -v 0x00000800 "$tmp/m/c" 2> /dev/null || true
    seq 1 3000 > "$tmp/m/c/text"
    umount "$tmp/m"
    # ntfs-3g finishes writing after the unmount returns: wait for it to exit.
    while pgrep -f "ntfs-3g.*$img" > /dev/null; do sleep 0.1; done
  done
fi
echo "seeds in $out"
