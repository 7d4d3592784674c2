#!/bin/bash
# What changed between two points of a 103 616-file tree (bench/extract.sh's 6 GiB
# ext4), five ways side by side in rotated rounds, the page cache dropped before each:
#   disksafe diff            (size + mtime, as rsync's quick check; no FUSE)
#   disksafe diff --content  (bytes of files of equal size)
#   rsync -n --itemize       (quick check between the kernel's mounts of both images)
#   diff -rq --no-dereference (bytes, between the kernel's mounts of both images)
#   restic diff              (its two snapshots of the same trees; its index, no data)
# Point 2 is point 1 with 3 000 files changed through the kernel's mount: 500 appended
# to, 500 touched, 500 chmod'ed, 500 removed, 500 rewritten in place with their mtime
# put back, and a directory of 500 new files.
# Needs root, e2fsprogs, rsync, restic; runs bench/extract.sh's setup first if needed.
# Usage: sudo bash bench/diff.sh [ROUNDS]   (default 3)
set -eu
W=${W:-/var/tmp/disksafe-extract-bench}
D=${D:-$(cd "$(dirname "$0")/.." && pwd)/target/release/disksafe}
export RESTIC_REPOSITORY=$W/restic RESTIC_PASSWORD=bench
[ -e "$W/usr.img" ] && [ -e "$W/safe" ] || bash "$(dirname "$0")/extract.sh" 0
mkdir -p "$W/k1" "$W/k2"
if [ ! -e "$W/usr2.img" ]; then
    cp --sparse=always "$W/usr.img" "$W/usr2.tmp"
    mount -o loop "$W/usr2.tmp" "$W/k2"
    (cd "$W/k2" && find . -type f | LC_ALL=C sort > /tmp/disksafe-diff-files)
    pick() { awk -v k="$1" 'NR % 41 == k' /tmp/disksafe-diff-files | head -500; }
    (
        cd "$W/k2"
        pick 1 | while read -r f; do echo more >> "$f"; done
        pick 2 | while read -r f; do touch -m -d '2026-01-02 03:04:05' "$f"; done
        pick 3 | while read -r f; do chmod 600 "$f"; done
        pick 4 | while read -r f; do rm -f "$f"; done
        pick 5 | while read -r f; do
            [ -s "$f" ] || continue
            t=$(stat -c %y "$f")
            printf 'X' | dd of="$f" conv=notrunc status=none
            touch -m -d "$t" "$f"
        done
        mkdir -p added
        for i in $(seq 500); do echo "new $i" > "added/f$i"; done
    )
    umount "$W/k2"
    mv "$W/usr2.tmp" "$W/usr2.img"
fi
if [ "$("$D" points "$W/safe" | grep -c '^ \+[0-9]')" -lt 2 ]; then
    "$D" backup "$W/safe" "usr=$W/usr2.img" > /dev/null
fi
if [ ! -e "$W/restic" ]; then
    restic init -q
    # Both trees from one mountpoint, so restic compares them path by path.
    for img in usr.img usr2.img; do
        mount -o ro,loop "$W/$img" "$W/k1"
        restic backup -q "$W/k1"
        umount "$W/k1"
    done
fi
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { local a b; a=$(date +%s.%N); "$@"; b=$(date +%s.%N); echo "$b - $a" | bc; }
mounts() { mount -o ro,loop "$W/usr.img" "$W/k1"; mount -o ro,loop "$W/usr2.img" "$W/k2"; }
unmounts() { umount "$W/k1" "$W/k2"; }
ds() {
    cold
    echo "disksafe diff            $(secs sh -c "'$D' diff '$W/safe' 1 2 usr/files > /tmp/dd.out 2> /dev/null") s, $(wc -l < /tmp/dd.out) lines"
}
ds_content() {
    cold
    echo "disksafe diff --content  $(secs sh -c "'$D' diff '$W/safe' 1 2 usr/files --content > /tmp/dc.out 2> /dev/null") s, $(wc -l < /tmp/dc.out) lines"
}
rs() {
    cold; mounts
    echo "rsync -n --itemize       $(secs sh -c "rsync -rlptgoDn --delete --out-format='%i %n' '$W/k1/' '$W/k2/' > /tmp/rs.out") s, $(wc -l < /tmp/rs.out) lines"
    unmounts
}
gnudiff() {
    cold; mounts
    echo "diff -rq                 $(secs sh -c "diff -rq --no-dereference '$W/k1' '$W/k2' > /tmp/gd.out || true") s, $(wc -l < /tmp/gd.out) lines"
    unmounts
}
snaps=$(restic snapshots --json | python3 -c 'import json, sys; s = json.load(sys.stdin); print(s[0]["short_id"], s[1]["short_id"])')
rd() {
    cold
    # shellcheck disable=SC2086
    echo "restic diff              $(secs sh -c "restic diff $snaps > /tmp/rd.out") s, $(grep -c '^[-+MUT?] ' /tmp/rd.out) lines"
}
peers=(ds ds_content rs gnudiff rd)
for i in $(seq "${1:-3}"); do
    for j in $(seq 0 4); do
        "${peers[$(( (i + j) % 5 ))]}"
    done
done
