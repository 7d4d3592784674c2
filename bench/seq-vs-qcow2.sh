#!/bin/bash
# Cold sequential reads of the mount benchmark's 6 GiB image through disksafe, through
# the qcow2 chain and through memfuse (the same size served from memory: the FUSE
# ceiling), in rounds whose order rotates: a quicker check of those ratios than a
# whole `bench.py mount`, and it shows how far the ceiling itself moves on this
# machine. Needs root and what `bench.py mount` left in $W (run it once).
# Usage: sudo bash bench/seq-vs-qcow2.sh [ROUNDS]   (default 3)
set -u
W=${W:-/var/tmp/disksafe-bench}
D=${D:-$(dirname "$0")/../target/release/disksafe}
M=${M:-$(dirname "$0")/../target/release/examples/memfuse}
mkdir -p "$W/mnt" "$W/memmnt"
size_mib=$(( $(stat -c %s "$W/usr.img") >> 20 ))
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# MB/s from dd's byte count and seconds (its own rate's unit varies: MB/s or GB/s).
mbs() { dd if="$1" of=/dev/null bs=1M 2>&1 | tail -1 | awk '{printf "%.0f", $1 / $(NF-3) / 1e6}'; }
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
# memfuse twice: replying from 4 MiB of data that stays in the CPU's caches (the
# ceiling usually quoted), then from 1 GiB that does not, as a real server's data.
mem() {
    local src
    for src in 4 1024; do
        cold
        "$M" "$W/memmnt" "$size_mib" "$src" & local p=$!
        for _ in $(seq 200); do [ -e "$W/memmnt/file" ] && break; sleep 0.05; done
        echo "memfuse-$src $(mbs "$W/memmnt/file") MB/s"
        kill $p; wait $p 2> /dev/null; umount "$W/memmnt" 2> /dev/null; sleep 0.5
    done
}
for i in $(seq "${1:-3}"); do
    case $((i % 3)) in
        1) ds; qc; mem ;;
        2) qc; mem; ds ;;
        0) mem; ds; qc ;;
    esac
done
