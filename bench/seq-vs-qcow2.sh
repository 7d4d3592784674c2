#!/bin/bash
# Cold sequential reads of the mount benchmark's 6 GiB image, disksafe against the
# qcow2 chain, in alternated pairs: a quicker check of that one ratio than a whole
# `bench.py mount`. Needs root and what `bench.py mount` left in $W (run it once).
# Usage: sudo bash bench/seq-vs-qcow2.sh [PAIRS]   (default 3)
set -u
W=${W:-/var/tmp/disksafe-bench}
D=${D:-$(dirname "$0")/../target/release/disksafe}
mkdir -p "$W/mnt"
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
mbs() { dd if="$1" of=/dev/null bs=1M 2>&1 | tail -1 | awk '{print $(NF-1)}'; }
ds() {
    cold
    "$D" mount "$W/safe-mount" "$W/mnt" --cache 512M > /dev/null 2>&1 || exit 1
    echo "disksafe $(mbs "$W/mnt/1/disk/disk.img") MB/s"
    "$D" umount "$W/mnt" > /dev/null; sleep 0.5
}
qc() {
    : > "$W/qcow-export"; cold
    qemu-storage-daemon \
        --blockdev "driver=file,node-name=f,filename=$W/qcow/l10.qcow2,read-only=on" \
        --blockdev driver=qcow2,node-name=top,file=f,read-only=on \
        --export "type=fuse,id=e,node-name=top,mountpoint=$W/qcow-export" 2> /dev/null &
    local p=$!
    for _ in $(seq 200); do [ "$(stat -c %s "$W/qcow-export")" -gt 0 ] && break; sleep 0.05; done
    echo "qcow2    $(mbs "$W/qcow-export") MB/s"
    kill $p; wait $p 2> /dev/null
}
for i in $(seq "${1:-3}"); do
    if [ $((i % 2)) = 1 ]; then ds; qc; else qc; ds; fi
done
