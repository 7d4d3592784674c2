#!/bin/bash
# Rolling a disk back to an earlier point: a 2 GiB image (mostly real data from
# /usr/lib, some zeros) backed up, then 1 % of it rewritten in scattered 64 KiB writes
# and backed up again. Each round puts the newer state onto a loop device and onto an
# image file, then brings each back to point 1 two ways, side by side: a full
# `restore` and `restore --only-differing`. Prints seconds per way and the ratio, with
# the page cache dropped before each (the output read cold, as a disk would be).
# Needs root (loop device, drop_caches).
# Usage: sudo bash bench/restore-rollback.sh ROUNDS [BINARY]
set -eu
rounds=$1
bin=$(realpath "${2:-target/release/disksafe}")
W=${W:-/var/tmp/disksafe-rollback-bench}
mkdir -p "$W"
if [ ! -e "$W/safe" ]; then
    find /usr/lib -type f -size +100k 2> /dev/null | head -4000 | xargs cat 2> /dev/null |
        head -c 1900M > "$W/disk.img" || true
    truncate -s 2G "$W/disk.img"
    "$bin" backup "$W/safe" "disk=$W/disk.img" > /dev/null
    python3 - "$W/disk.img" << 'EOT'
import os, random, sys
random.seed(7)
size = os.path.getsize(sys.argv[1])
with open(sys.argv[1], "r+b") as f:
    for _ in range(size // 100 // 65536):
        f.seek(random.randrange(0, size // 65536) * 65536)
        f.write(os.urandom(65536))
EOT
    "$bin" backup "$W/safe" "disk=$W/disk.img" > /dev/null
fi
now() { date +%s.%N; }
way() {
    # way OUTPUT LABEL [ARGS]: restores point 1 onto OUTPUT holding point 2.
    local out=$1 label=$2
    shift 2
    "$bin" restore "$W/safe" 2 disk "$out" 2> /dev/null
    sync; echo 3 > /proc/sys/vm/drop_caches
    local t0 t1
    t0=$(now)
    "$bin" restore "$W/safe" 1 disk "$out" "$@" 2> "$W/said"
    sync
    t1=$(now)
    echo "$label: $(echo "$t1 - $t0" | bc) s ($(tail -1 "$W/said"))"
}
truncate -s 2G "$W/target.img"
dev=$(losetup -f --show "$W/target.img")
trap 'losetup -d "$dev"' EXIT
for r in $(seq "$rounds"); do
    echo "round $r"
    way "$dev" "loop device, full" | tee "$W/a"
    way "$dev" "loop device, --only-differing" --only-differing | tee "$W/b"
    way "$W/file.img" "image file, full" | tee "$W/c"
    way "$W/file.img" "image file, --only-differing" --only-differing | tee "$W/d"
    for pair in "a b" "c d"; do
        set -- $pair
        x=$(sed 's/.*: \([0-9.]*\) s.*/\1/' "$W/$1")
        y=$(sed 's/.*: \([0-9.]*\) s.*/\1/' "$W/$2")
        echo "  full / only-differing: $(echo "scale=2; $x / $y" | bc)x"
    done
done
