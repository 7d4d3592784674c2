#!/bin/bash
# What decrypting costs: a 600 MiB file read cold from an ext4 volume's tree, the
# volume backed up once as it is and once encrypted by cryptsetup (LUKS2,
# aes-xts-plain64 with a 512-bit key, 4096-byte sectors: cryptsetup's defaults but for
# the sector size, which it picks from the device), both in one safe as two devices.
# Every round reads the file from each in turn from a fresh mount with the page cache
# dropped, and prints MB/s and the server's CPU time; the ratio is the cost of the
# decryption. `cryptsetup benchmark -c aes-xts -s 512` shows the kernel's own AES-XTS
# speed on this machine for comparison.
# Needs root, e2fsprogs and cryptsetup-bin.
# Usage: sudo bash bench/luks-read.sh ROUNDS [BINARY]
set -eu
rounds=$1
bin=${2:-target/release/disksafe}
W=${W:-/var/tmp/disksafe-luks-bench}
mkdir -p "$W"
if [ ! -e "$W/safe" ]; then
    mkdir -p "$W/src"
    find /usr/lib -type f -size +100k 2> /dev/null | head -3000 | xargs cat 2> /dev/null |
        head -c 600M > "$W/src/big" || true
    truncate -s 1000M "$W/plain.img"
    mkfs.ext4 -q -F -b 4096 -d "$W/src" "$W/plain.img" 900M
    cp --sparse=always "$W/plain.img" "$W/luks.img"
    printf bench > "$W/key"
    cryptsetup reencrypt --batch-mode --encrypt --type luks2 --sector-size 4096 \
        --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --reduce-device-size 32M \
        --key-file "$W/key" "$W/luks.img"
    "$bin" backup "$W/safe" "plain=$W/plain.img" "luks=$W/luks.img" > /dev/null
fi
one() {
    local mnt=$W/mnt said pid r st
    mkdir -p "$mnt"
    sync; echo 3 > /proc/sys/vm/drop_caches
    said=$("$bin" mount "$W/safe" "$mnt" --key-file "$W/key" 2>&1)
    pid=$(echo "$said" | sed -n 's/.*server pid \([0-9]*\).*/\1/p')
    ls "$mnt/1/$1/files" > /dev/null
    sleep 1
    r=$(dd if="$mnt/1/$1/files/big" of=/dev/null bs=1M 2>&1 | tail -1 | awk '{printf "%.0f", $1 / $(NF-3) / 1e6}')
    st=($(awk '{print $14, $15}' "/proc/$pid/stat"))
    echo "$1: $r MB/s, server CPU $(( (st[0] + st[1]) * 10 )) ms"
    "$bin" umount "$mnt" > /dev/null; sleep 0.5
}
for r in $(seq "$rounds"); do
    echo "round $r"
    one plain
    one luks
done
