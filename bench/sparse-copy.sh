#!/bin/bash
# Copying a mostly empty disk out of a point: a 64 GiB device holding 1 GiB of data in
# 16 scattered 64 MiB pieces, backed up once; each round copies its disk.img from a
# fresh mount (page cache dropped) with `cp --sparse=always` to tmpfs and with
# `qemu-img convert -O raw` (a sparse file on tmpfs too), for each
# binary in turn, and prints seconds and the copy's allocated size. A binary that
# answers SEEK_DATA/SEEK_HOLE and reports the image's allocated blocks lets both skip
# the 63 GiB of holes; one that does not makes them read every zero through FUSE.
# Needs root, coreutils, qemu-utils (qemu-img; skipped when absent) and ~1.2 GiB of
# free RAM for the copies on /dev/shm.
# Usage: sudo bash bench/sparse-copy.sh ROUNDS BINARY...
set -eu
rounds=$1
shift
W=${W:-/var/tmp/disksafe-sparse-bench}
mkdir -p "$W"
if [ ! -e "$W/safe" ]; then
    rm -f "$W/disk.img"
    truncate -s 64G "$W/disk.img"
    for i in $(seq 0 15); do
        head -c 64M /dev/urandom | dd of="$W/disk.img" bs=1M seek=$((i * 4096 + 123)) conv=notrunc status=none
    done
    "$1" backup "$W/safe" "disk=$W/disk.img" > /dev/null
fi
out=/dev/shm/disksafe-sparse-copy
one() { # $1 binary, $2 tool
    local mnt=$W/mnt t0 t1
    mkdir -p "$mnt"
    sync; echo 3 > /proc/sys/vm/drop_caches
    "$1" mount "$W/safe" "$mnt" > /dev/null 2>&1
    rm -f "$out"
    t0=$(date +%s.%N)
    case $2 in
        cp) cp --sparse=always "$mnt/1/disk/disk.img" "$out" ;;
        qemu-img) qemu-img convert -O raw "$mnt/1/disk/disk.img" "$out" ;;
    esac
    t1=$(date +%s.%N)
    printf '%-40s %-9s %7.2f s  copy allocates %s\n' "$1" "$2" "$(echo "$t1 - $t0" | bc)" \
        "$(du -h "$out" | cut -f1)"
    rm -f "$out"
    "$1" umount "$mnt" > /dev/null
}
tools=cp
command -v qemu-img > /dev/null && tools="cp qemu-img"
for r in $(seq "$rounds"); do
    echo "round $r"
    for tool in $tools; do
        for b in "$@"; do one "$b" "$tool"; done
    done
done
