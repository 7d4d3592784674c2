#!/bin/bash
# Copying a whole file tree out of a point, three ways side by side in rotated rounds,
# the page cache dropped before each: `disksafe extract` (no FUSE), `cp -a` out of a
# fresh disksafe mount, and `cp -a` out of the kernel's read-only mount of the source
# image itself (the floor: no safe, no FUSE). The copies land on a tmpfs, so what is
# timed is reading the tree and writing it to memory, not this VM's disk.
# Needs root, e2fsprogs, ~12 GB free under $W and ~5 GB of RAM for the tmpfs copy.
# Usage: sudo bash bench/extract.sh [ROUNDS]   (default 3)
set -eu
W=${W:-/var/tmp/disksafe-extract-bench}
D=${D:-$(cd "$(dirname "$0")/.." && pwd)/target/release/disksafe}
OUT=${OUT:-/dev/shm/disksafe-extract-bench}
mkdir -p "$W/mnt" "$W/kernel"
if [ ! -e "$W/usr.img" ]; then
    # /usr/lib and /usr/share in one 6 GiB ext4 (the mount benchmark's kind of image).
    rm -rf "$W/src"
    mkdir -p "$W/src"
    cp -a /usr/lib /usr/share "$W/src/"
    truncate -s 6G "$W/usr.img.tmp"
    mkfs.ext4 -q -F -d "$W/src" "$W/usr.img.tmp"
    mv "$W/usr.img.tmp" "$W/usr.img"
    rm -rf "$W/src"
fi
if [ ! -e "$W/safe" ]; then
    "$D" backup "$W/safe" "usr=$W/usr.img" > /dev/null
fi
cold() { rm -rf "$OUT"; mkdir -p "$OUT"; sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { local a b; a=$(date +%s.%N); "$@"; b=$(date +%s.%N); echo "$b - $a" | bc; }
extract() {
    cold
    echo "extract      $(secs "$D" extract "$W/safe" 1 usr/files "$OUT/x" 2> /dev/null) s"
}
fuse_cp() {
    cold
    "$D" mount "$W/safe" "$W/mnt" > /dev/null 2>&1
    echo "mount + cp   $(secs cp -a "$W/mnt/1/usr/files" "$OUT/x") s"
    "$D" umount "$W/mnt" > /dev/null
}
kernel_cp() {
    cold
    mount -o ro,loop "$W/usr.img" "$W/kernel"
    echo "kernel + cp  $(secs cp -a "$W/kernel" "$OUT/x") s"
    umount "$W/kernel"
}
for i in $(seq "${1:-3}"); do
    case $((i % 3)) in
        1) extract; fuse_cp; kernel_cp ;;
        2) fuse_cp; kernel_cp; extract ;;
        0) kernel_cp; extract; fuse_cp ;;
    esac
done
rm -rf "$OUT"
