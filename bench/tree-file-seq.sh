#!/bin/bash
# Cold sequential reads of one large file in a mounted file tree, for two or more
# disksafe binaries side by side (an A/B of a change): a 600 MiB file on a 4 KiB-block
# ext3 (block-mapped: indirect pointers), and on NTFS (4 KiB clusters) a 600 MiB file
# and a 400 MiB file in a compressed directory (LZNT1), all filled from /usr/lib, each
# volume backed up into its own safe. Every round reads with each binary in turn from a fresh mount with the
# page cache dropped, and prints MB/s and the server's CPU time.
# Needs root, e2fsprogs, ntfs-3g and attr (setfattr).
# Usage: sudo bash bench/tree-file-seq.sh ROUNDS BINARY...
#   e.g. git worktree add /tmp/old HEAD~1 && (cd /tmp/old && cargo build --release)
#        sudo bash bench/tree-file-seq.sh 5 /tmp/old/target/release/disksafe target/release/disksafe
set -eu
rounds=$1
shift
W=${W:-/var/tmp/disksafe-tree-bench}
mkdir -p "$W"
fill() { find /usr/lib -type f -size +100k 2> /dev/null | head -3000 | xargs cat 2> /dev/null | head -c "$1" || true; }
if [ ! -e "$W/ext3/safe" ]; then
    mkdir -p "$W/ext3/src"
    fill 600M > "$W/ext3/src/big"
    truncate -s 1200M "$W/ext3/fs.img"
    mkfs.ext3 -q -F -b 4096 -d "$W/ext3/src" "$W/ext3/fs.img"
    "$1" backup "$W/ext3/safe" "vol=$W/ext3/fs.img" > /dev/null
fi
N=$W/ntfs2
if [ ! -e "$N/safe" ]; then
    mkdir -p "$N/m"
    truncate -s 2G "$N/fs.img"
    mkntfs -q -F -Q "$N/fs.img" 2> /dev/null
    ntfs-3g "$N/fs.img" "$N/m"
    fill 600M > "$N/m/big"
    mkdir "$N/m/c"
    setfattr -n system.ntfs_attrib_be -v 0x00000800 "$N/m/c"
    fill 400M > "$N/m/c/big"
    umount "$N/m"
    "$1" backup "$N/safe" "vol=$N/fs.img" > /dev/null
fi
# $1 binary, $2 safe, $3 file under the point's files/
one() {
    local mnt=$W/mnt said pid r st
    mkdir -p "$mnt"
    sync; echo 3 > /proc/sys/vm/drop_caches
    said=$("$1" mount "$2" "$mnt" 2>&1)
    pid=$(echo "$said" | sed -n 's/.*server pid \([0-9]*\).*/\1/p')
    r=$(dd if="$mnt/1/vol/files/$3" of=/dev/null bs=1M 2>&1 | tail -1 | awk '{printf "%.0f", $1 / $(NF-3) / 1e6}')
    st=($(awk '{print $14, $15}' "/proc/$pid/stat"))
    echo "$(basename "$(dirname "$2")") $3 $1: $r MB/s, server CPU $(( (st[0] + st[1]) * 10 )) ms"
    "$1" umount "$mnt" > /dev/null; sleep 0.5
}
for r in $(seq "$rounds"); do
    echo "round $r"
    for b in "$@"; do one "$b" "$W/ext3/safe" big; done
    for b in "$@"; do one "$b" "$N/safe" big; done
    for b in "$@"; do one "$b" "$N/safe" c/big; done
done
