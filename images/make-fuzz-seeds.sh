#!/usr/bin/env bash
# Builds small ext2/ext3/ext4 images (and partitioned disks, FAT, XFS and btrfs volumes and,
# as root, an LVM PV, a thin pool and, with ntfs-3g, NTFS images) from a generated tree as fuzzing
# seeds.
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
# mke2fs -d copies each source file's ctime and atime, which no one can set (and
# reading the tree moves atime): debugfs pins them so the seeds are the same every run.
for ino in $(seq 1 64); do
  echo "sif <$ino> ctime @1700000000"
  echo "sif <$ino> atime @1700000000"
done > "$tmp/pin-times"
i=0
for opts in "-t ext4 -O inline_data" "-t ext4 -O metadata_csum,64bit" "-t ext2" "-t ext3" "-t ext4 -O ^extents,^64bit"; do
  i=$((i + 1))
  truncate -s 512K "$out/seed$i.img"
  # shellcheck disable=SC2086
  mke2fs -q -F -b 1024 -N 64 -U 6d2d8e3c-0f4b-4b1e-9a57-2f0c4c9b1a01 \
    -E hash_seed=1f6a4c2e-3b5d-4e7f-8091-a2b3c4d5e6f7 $opts -d "$tmp/src" "$out/seed$i.img"
  debugfs -w -f "$tmp/pin-times" "$out/seed$i.img" > /dev/null 2>&1
done
# bigalloc: 4-block clusters, group 0 starting before the superblock's block.
truncate -s 2M "$out/seed8.img"
mke2fs -q -F -b 1024 -N 64 -U 6d2d8e3c-0f4b-4b1e-9a57-2f0c4c9b1a01 \
  -E hash_seed=1f6a4c2e-3b5d-4e7f-8091-a2b3c4d5e6f7 -t ext4 -O bigalloc,^has_journal \
  -C 4096 -d "$tmp/src" "$out/seed8.img"
debugfs -w -f "$tmp/pin-times" "$out/seed8.img" > /dev/null 2>&1
# Orphans (a snapshot of a running server holds them): inode 12 unlinked but on the
# orphan list, inode 13 after it, still linked (a truncate in flight).
cp "$out/seed2.img" "$out/seed10.img"
printf 'sif <12> links_count 0\nsif <12> dtime 13\nssv last_orphan 12\n' > "$tmp/orphans"
debugfs -w -f "$tmp/orphans" "$out/seed10.img" > /dev/null 2>&1
# Two ext4 volumes that need journal recovery (committed transactions, a revoke),
# written with debugfs's journal commands: plain jbd2 and with v3 checksums. 3 MiB:
# the smallest volume that takes the smallest journal (1024 blocks).
head -c 2048 "$tmp/src/dir/b" > "$tmp/jblocks"
for v in 6 7; do
  truncate -s 3M "$out/seed$v.img"
  mke2fs -q -F -b 1024 -N 64 -J size=1 -t ext4 -U 6d2d8e3c-0f4b-4b1e-9a57-2f0c4c9b1a01 \
    -E hash_seed=1f6a4c2e-3b5d-4e7f-8091-a2b3c4d5e6f7 "$out/seed$v.img"
  csum=$([ $v = 7 ] && echo -c || true)
  printf 'jo %s\njw -b 300,301 %s\njc\njo\njw -r 301\njw -b 302 %s\njc\n' \
    "$csum" "$tmp/jblocks" "$tmp/jblocks" > "$tmp/journal-cmds"
  debugfs -w -f "$tmp/journal-cmds" "$out/seed$v.img" > /dev/null 2>&1
done
# A fast_commit volume needing recovery whose fast-commit area holds two commits of
# the transaction after the logged one (inode records, ranges added and deleted, a
# create, a link, an unlink, padding), checksummed as the kernel writes them. No tool
# writes fast commits but the kernel, so Python lays them out (e2fsck replays them).
if command -v python3 > /dev/null; then
  truncate -s 3M "$out/seed9.img"
  mke2fs -q -F -b 1024 -N 64 -J size=1 -t ext4 -O fast_commit \
    -U 6d2d8e3c-0f4b-4b1e-9a57-2f0c4c9b1a01 \
    -E hash_seed=1f6a4c2e-3b5d-4e7f-8091-a2b3c4d5e6f7 -d "$tmp/src" "$out/seed9.img"
  debugfs -w -f "$tmp/pin-times" "$out/seed9.img" > /dev/null 2>&1
  printf 'jo\njw -b 300,301 %s\njc\n' "$tmp/jblocks" > "$tmp/journal-cmds"
  debugfs -w -f "$tmp/journal-cmds" "$out/seed9.img" > /dev/null 2>&1
  python3 - "$out/seed9.img" << 'EOT'
import struct, subprocess, sys
img = sys.argv[1]
def dbg(cmd):
    return subprocess.run(["debugfs", "-R", cmd, img], capture_output=True, text=True).stdout
def crc32c(crc, data):
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc
bs = 1024
f = open(img, "r+b")
def jblock(n):
    return int(dbg(f"bmap <8> {n}").split()[0])
# The journal superblock: fast commits on, next transaction after the logged ones.
jsb = jblock(0) * bs
f.seek(jsb); sb = bytearray(f.read(bs))
maxlen, = struct.unpack(">I", sb[0x10:0x14])
nfc, = struct.unpack(">I", sb[0x54:0x58])
sb[0x28:0x2C] = struct.pack(">I", struct.unpack(">I", sb[0x28:0x2C])[0] | 0x20)
f.seek(jsb); f.write(sb)
tid = 1 + max(int(l.split()[3].rstrip(",")) for l in dbg("logdump").splitlines() if "type 2 (commit block)" in l)
# Inode 12's record ("/a") as the template of logged records.
m = dbg("imap <12>").split()
blk, off = int(m[m.index("located") + 3].rstrip(",")), int(m[m.index("offset") + 1], 16)
f.seek(blk * bs + off); raw = f.read(256)
def tag(t, v): return struct.pack("<HH", t, len(v)) + v
def dentry(p, i, name): return struct.pack("<II", p, i) + name
def commit(tags, head):
    b = (tag(9, struct.pack("<II", 0, tid)) if head else b"") + b"".join(tags)
    c = crc32c(0, b)
    t = struct.pack("<HH", 8, bs - len(b) - 4) + struct.pack("<I", tid)
    c = crc32c(c, t)
    return (b + t + struct.pack("<I", c)).ljust(bs, b"\0")
one = commit([
    tag(6, struct.pack("<I", 12) + raw),
    tag(1, struct.pack("<IIHHI", 12, 3, 2, 0, 300)),
    tag(2, struct.pack("<III", 12, 0, 1)),
    tag(6, struct.pack("<I", 20) + raw),
    tag(3, dentry(2, 20, b"fcnew")),
    tag(4, dentry(2, 12, b"fclink")),
    tag(5, dentry(2, 12, b"a")),
    tag(7, bytes(6)),
], True)
two = commit([
    tag(1, struct.pack("<IIHHI", 20, 0, 32768 + 4, 0, 302)),
    tag(2, struct.pack("<III", 20, 1, 2)),
    tag(6, struct.pack("<I", 20) + raw),
], False)
first = maxlen - nfc + 1
for i, b in enumerate([one, two]):
    f.seek(jblock(first + i) * bs); f.write(b)
print("fast commits for transaction", tid, "at journal blocks", first, first + 1)
EOT
else
  echo "no python3: no fast-commit seed"
fi
# An md RAID1 member (version-1.2 superblock at 4 KiB, checksummed as mdadm writes
# it) whose array data, from 1 MiB, is the ext4 seed: for the disk target.
if command -v python3 > /dev/null; then
  truncate -s 2M "$out/disk-md.img"
  dd if="$out/seed2.img" of="$out/disk-md.img" bs=1M seek=1 conv=notrunc status=none
  python3 - "$out/disk-md.img" << 'EOT'
import struct, sys
b = bytearray(4096)
def put(o, v): b[o:o + len(v)] = v
put(0x00, struct.pack("<II", 0xa92b4efc, 1))
put(0x10, bytes(range(16)))
put(0x20, b"seedhost:0")
put(0x48, struct.pack("<I", 1))                  # RAID1
put(0x50, struct.pack("<Q", 1024))               # 512 KiB of data per member
put(0x5C, struct.pack("<I", 2))                  # two members
put(0x80, struct.pack("<QQQ", 2048, 2048, 8))    # data offset, data size, sb offset
put(0xDC, struct.pack("<I", 2))                  # roles
put(0x100, struct.pack("<HH", 0, 1))
s = sum(struct.unpack("<65I", bytes(b[:260])))
put(0xD8, struct.pack("<I", (s & 0xffffffff) + (s >> 32)))
with open(sys.argv[1], "r+b") as f:
    f.seek(4096)
    f.write(b)
EOT
fi
# Partitioned disks for the disk target, the ext4 seed in their first partition: an
# MBR with an extended partition holding logical ones, a GPT, and a GPT of 4096-byte
# sectors. Fixed ids, so the seeds are the same every run.
if command -v sfdisk > /dev/null; then
  truncate -s 2M "$out/disk-mbr.img" "$out/disk-gpt.img"
  sfdisk -q "$out/disk-mbr.img" > /dev/null << 'EOT'
label: dos
label-id: 0x5eed0001
start=64, size=1024, type=83
start=1100, size=900, type=5
start=1120, size=200, type=83
start=1340, size=200, type=7
start=1560, size=400, type=83
EOT
  sfdisk -q "$out/disk-gpt.img" > /dev/null << 'EOT'
label: gpt
label-id: 5EED0000-0000-4000-8000-000000000001
first-lba: 34
start=40, size=1024, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=5EED0000-0000-4000-8000-000000000002
start=1100, size=1024, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, uuid=5EED0000-0000-4000-8000-000000000003
EOT
  dd if="$out/seed2.img" of="$out/disk-mbr.img" bs=512 seek=64 conv=notrunc status=none
  dd if="$out/seed2.img" of="$out/disk-gpt.img" bs=512 seek=40 conv=notrunc status=none
  # 4096-byte sectors need a loop device that has them (root only).
  if [ "$(id -u)" = 0 ] && truncate -s 2M "$tmp/gpt4k.img" &&
    loop=$(losetup -f --show --sector-size 4096 "$tmp/gpt4k.img" 2> /dev/null); then
    made=0
    sfdisk -q "$loop" > /dev/null 2>&1 << 'EOT' && made=1
label: gpt
label-id: 5EED0000-0000-4000-8000-000000000004
first-lba: 6
start=8, size=128, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=5EED0000-0000-4000-8000-000000000005
start=136, size=100, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=5EED0000-0000-4000-8000-000000000006
EOT
    losetup -d "$loop"
    if [ $made = 1 ]; then
      dd if="$out/seed2.img" of="$tmp/gpt4k.img" bs=4096 seek=8 conv=notrunc status=none
      mv "$tmp/gpt4k.img" "$out/disk-gpt4k.img"
    fi
  fi
fi
# FAT volumes for the disk target, as a USB stick without a partition table holds
# them: FAT12 and FAT16 with 8.3 and long names, a subdirectory and a file of several
# clusters (written by mtools), and an empty FAT32. Fixed volume ids; the directory
# entries mcopy makes carry the time of the run.
if command -v mkfs.vfat > /dev/null && command -v mcopy > /dev/null; then
  mkdir -p "$tmp/fat/Sub Dir"
  printf 'short' > "$tmp/fat/README.TXT"
  printf 'long name' > "$tmp/fat/a long file name.txt"
  head -c 5000 /dev/zero | tr '\0' 'F' > "$tmp/fat/Sub Dir/several clusters.bin"
  for f in "$tmp/fat/README.TXT" "$tmp/fat/a long file name.txt" "$tmp/fat/Sub Dir/several clusters.bin"; do
    touch -d '2020-01-02 03:04:06 UTC' "$f"
  done
  for v in 12:1M 16:2560K; do
    img="$out/disk-fat${v%:*}.img"
    truncate -s "${v#*:}" "$img"
    mkfs.vfat -F "${v%:*}" -s 1 -i 5eed0${v%:*}0 "$img" > /dev/null
    (cd "$tmp/fat" && TZ=UTC mcopy -s -m -i "$img" README.TXT "a long file name.txt" "Sub Dir" ::/)
  done
  truncate -s 2M "$out/disk-fat32.img"
  mkfs.vfat -F 32 -s 1 -i 5eed0320 "$out/disk-fat32.img" > /dev/null 2>&1 || rm -f "$out/disk-fat32.img"
fi
# An exFAT volume for the disk target (mkfs.exfat's root: bitmap, up-case table;
# 3 MiB, its smallest; it stamps a random serial).
if command -v mkfs.exfat > /dev/null; then
  truncate -s 3M "$out/disk-exfat.img"
  mkfs.exfat "$out/disk-exfat.img" > /dev/null 2>&1 || rm -f "$out/disk-exfat.img"
fi
# A LUKS2 volume for the disk target (cryptsetup; no device-mapper needed): 16 KiB
# metadata areas, one PBKDF2 keyslot, 1 MiB of data. Its salts and key material are
# random, the UUID fixed; the target parses the header (JSON included), it opens
# nothing.
if command -v cryptsetup > /dev/null; then
  truncate -s 2M "$out/disk-luks2.img"
  printf seed > "$tmp/luks-key"
  cryptsetup luksFormat --batch-mode --type luks2 --luks2-metadata-size 16k \
    --luks2-keyslots-size 256k --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --uuid 5eed1000-0000-4000-8000-000000000001 --key-file "$tmp/luks-key" \
    "$out/disk-luks2.img" > /dev/null 2>&1 || rm -f "$out/disk-luks2.img"
fi
# XFS volumes for the disk target, v5 and v4, filled from a prototype (a short-form
# and a block directory, a symlink, files of one and of several blocks): one AG of
# 1 KiB blocks with the log kept outside, cut to the first MiB, where all of it lies.
# mkfs.xfs stamps the time of the run. Small volumes need mkfs.xfs's test overrides.
if command -v mkfs.xfs > /dev/null; then
  {
    echo /dev/null
    echo 0 0
    echo 'd--755 0 0'
    echo "a ---644 0 0 $tmp/src/a"
    echo "b ---600 1 2 $tmp/src/dir/b"
    echo 'link l--777 0 0 a'
    echo 'dir d--750 3 4'
    for i in $(seq 1 40); do echo "f$i ---644 0 0 $tmp/src/dir/sub/f$i"; done
    echo '$'
    echo '$'
  } > "$tmp/xfs.proto"
  for v in 5:1 4:0; do
    img="$out/disk-xfs-v${v%:*}.img"
    truncate -s 16M "$img" "$tmp/xfs-log.img"
    TEST_DIR=1 TEST_DEV=1 QA_CHECK_FS=1 mkfs.xfs -q -f -b size=1024 -d agcount=1 \
      -l logdev="$tmp/xfs-log.img" -m crc=${v#*:},uuid=6d2d8e3c-0f4b-4b1e-9a57-2f0c4c9b1a01 \
      -p "$tmp/xfs.proto" "$img" > /dev/null 2>&1 || rm -f "$img"
    if [ -f "$img" ]; then truncate -s 1M "$img"; fi
  done
fi
# A btrfs volume for the disk target (mkfs.btrfs --rootdir, mixed block groups, 4 KiB
# nodes, fixed UUIDs; mkfs stamps the time of the run). mkfs puts the metadata 5 MiB
# in, past the 3 MiB the fuzzer reads, so the first MiB of that chunk (all the 17
# nodes and the data) is moved to 2 MiB and its chunk item pointed there, the chunk
# tree's checksum resealed: our reader does not cross-check the device extents.
if command -v mkfs.btrfs > /dev/null && command -v python3 > /dev/null; then
  img="$out/disk-btrfs.img"
  truncate -s 16M "$img"
  if mkfs.btrfs -q -f -M -n 4096 -U 6d2d8e3c-0f4b-4b1e-9a57-2f0c4c9b1a01 \
    --rootdir "$tmp/src" "$img" > /dev/null 2>&1; then
    python3 - "$img" << 'EOT' || rm -f "$img"
import struct, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
sb = 0x10000
node, root = struct.unpack_from("<I", b, sb + 0x94)[0], struct.unpack_from("<Q", b, sb + 0x58)[0]
def crc32c(data):
    crc = 0xFFFFFFFF
    for x in data:
        crc ^= x
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF
n = root  # the system chunk maps logical to physical one to one in mkfs's layout
moved = None
for i in range(struct.unpack_from("<I", b, n + 0x60)[0]):
    item = n + 101 + i * 25
    obj, ty, off = struct.unpack_from("<QBQ", b, item)
    doff = struct.unpack_from("<I", b, item + 17)[0]
    chunk = n + 101 + doff
    ctype = struct.unpack_from("<Q", b, chunk + 24)[0]
    phys = struct.unpack_from("<Q", b, chunk + 48 + 8)[0]
    if ty == 228 and ctype & 4 and moved is None:  # the first metadata chunk
        struct.pack_into("<Q", b, chunk + 48 + 8, 2 << 20)
        moved = phys
assert moved is not None
struct.pack_into("<I", b, n, crc32c(bytes(b[n + 32:n + node])))
b[2 << 20:3 << 20] = b[moved:moved + (1 << 20)]
open(p, "wb").write(bytes(b[:3 << 20]))
EOT
  else
    rm -f "$img"
  fi
fi
# Makes image $1 ($2 bytes) an LVM PV (a 128 KiB metadata area) of a new VG $3 of
# 64 KiB extents through a loop device, left in $loop for the caller to detach;
# fails (the image removed) where loop devices or LVM's tools do. LVM stamps random
# UUIDs and the time into its metadata; nothing is activated (no device-mapper).
lvm_pv() {
  truncate -s "$2" "$1"
  if ! loop=$(losetup -f --show "$1" 2> /dev/null); then
    rm -f "$1"
    return 1
  fi
  export LVM_SUPPRESS_FD_WARNINGS=1
  if pvcreate -q --metadatasize 128k --dataalignment 256k "$loop" > /dev/null 2>&1 &&
    vgcreate -q -s 64k "$3" "$loop" > /dev/null 2>&1; then
    return 0
  fi
  losetup -d "$loop"
  rm -f "$1"
  return 1
}
# LVM's own vgcfgbackup text gains LV sections (what LVM will not create without
# device-mapper) through these, for vgcfgrestore: `lv` writes one LV of one
# segment, `lin` a linear segment on pv0, `add_lvs` puts them in the text.
cat > "$tmp/lvtext.py" << 'EOT'
def lv(n, name, status, seg):
    return ('%s {\nid = "lv%04d-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"\nstatus = [%s]\nflags = []\n'
            'segment_count = 1\nsegment1 {\nstart_extent = 0\n%s\n}\n}\n' % (name, n, status, seg))
vis, hid = '"READ", "WRITE", "VISIBLE"', '"READ", "WRITE"'
def lin(n, at):
    return 'extent_count = %d\ntype = "striped"\nstripe_count = 1\nstripes = ["pv0", %d]' % (n, at)
def add_lvs(path, lvs):
    t = open(path).read()
    end = t.rfind("}")
    t = t[:end] + "logical_volumes {\n" + lvs + "}\n" + t[end:]
    open(path, "w").write(t.replace("seqno = 1", "seqno = 2", 1))
EOT
# An LVM PV (as root with lvm2 and loop devices): one linear LV of 8 extents holding
# the ext4 seed, on LVM's smallest PV.
if [ "$(id -u)" = 0 ] && command -v pvcreate > /dev/null; then
  img="$out/disk-lvm.img"
  vg="dsfuzz$$"
  if lvm_pv "$img" 2M "$vg"; then
    if lvcreate --driverloaded n -q -an -Zn -l 8 -n lv "$vg" > /dev/null 2>&1; then
      pe=$(pvs --driverloaded n --noheadings --units b --nosuffix -o pe_start "$loop" 2> /dev/null | tr -d ' ')
      dd if="$out/seed2.img" of="$img" bs=512 seek=$((pe / 512)) conv=notrunc status=none
    else
      rm -f "$img"
    fi
    losetup -d "$loop"
  fi
fi
# A thin pool (as root with lvm2, thin-provisioning-tools and python3): on a 3 MiB PV
# of 64 KiB extents, pool_tmeta (4 extents) and pool_tdata (16 extents: 16 chunks of
# 64 KiB), made by editing LVM's own vgcfgbackup text; thin LV t (device 1) maps 8
# chunks scattered over the pool's data, holding the ext4 seed; 8 are mapped by none.
if [ "$(id -u)" = 0 ] && command -v pvcreate > /dev/null &&
  command -v thin_restore > /dev/null && command -v python3 > /dev/null; then
  img="$out/disk-thin.img"
  vg="dsfuzzthin$$"
  if lvm_pv "$img" 3M "$vg"; then
    if vgcfgbackup --driverloaded n -q -f "$tmp/vg.txt" "$vg" > /dev/null 2>&1; then
      PYTHONPATH="$tmp" python3 - "$tmp/vg.txt" << 'EOT'
import sys
from lvtext import lv, vis, hid, lin, add_lvs
add_lvs(sys.argv[1],
        lv(1, "pool", vis, 'extent_count = 16\ntype = "thin-pool"\nmetadata = "pool_tmeta"\n'
           'pool = "pool_tdata"\ntransaction_id = 1\nchunk_size = 128')
        + lv(2, "pool_tmeta", hid, lin(4, 0))
        + lv(3, "pool_tdata", hid, lin(16, 4))
        + lv(4, "t", vis, 'extent_count = 8\ntype = "thin"\nthin_pool = "pool"\ntransaction_id = 0\ndevice_id = 1'))
EOT
      slots="9 2 14 5 0 11 7 12"
      {
        echo '<superblock uuid="" time="1" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="16">'
        echo '<device dev_id="1" mapped_blocks="8" transaction="0" creation_time="0" snap_time="0">'
        v=0
        for d in $slots; do
          echo "<single_mapping origin_block=\"$v\" data_block=\"$d\" time=\"0\"/>"
          v=$((v + 1))
        done
        echo '</device>'
        echo '</superblock>'
      } > "$tmp/thin.xml"
      truncate -s 256K "$tmp/tmeta.bin"
      if vgcfgrestore --driverloaded n -q --force -f "$tmp/vg.txt" "$vg" > /dev/null 2>&1 &&
        thin_restore -q -i "$tmp/thin.xml" -o "$tmp/tmeta.bin" > /dev/null 2>&1; then
        pe=$(pvs --driverloaded n --noheadings --units b --nosuffix -o pe_start "$loop" 2> /dev/null | tr -d ' ')
        dd if="$tmp/tmeta.bin" of="$img" bs=64k seek=$((pe / 65536)) conv=notrunc status=none
        v=0
        for d in $slots; do
          dd if="$out/seed2.img" of="$img" bs=64k skip=$v seek=$((pe / 65536 + 4 + d)) count=1 conv=notrunc status=none
          v=$((v + 1))
        done
      else
        rm -f "$img"
      fi
    else
      rm -f "$img"
    fi
    losetup -d "$loop"
  fi
fi
# A cached LV and a RAID5 LV (as root with lvm2, thin-provisioning-tools and
# python3): on a 3 MiB PV of 64 KiB extents, made by editing LVM's own vgcfgbackup
# text. LV c (8 extents) is cached by pool cpool (4 cache blocks of 64 KiB; its
# metadata by cache_restore maps origin blocks 0 and 3 to cache blocks 2 and 0,
# holding copies of them); LV r (8 extents) is a RAID5 of three images of 4
# extents, the ext4 seed striped left-symmetric in 64 KiB chunks with parity.
if [ "$(id -u)" = 0 ] && command -v pvcreate > /dev/null &&
  command -v cache_restore > /dev/null && command -v python3 > /dev/null; then
  img="$out/disk-lvmcache.img"
  vg="dsfuzzcache$$"
  if lvm_pv "$img" 3M "$vg"; then
    if vgcfgbackup --driverloaded n -q -f "$tmp/vgc.txt" "$vg" > /dev/null 2>&1; then
      PYTHONPATH="$tmp" python3 - "$tmp/vgc.txt" << 'EOT'
import sys
from lvtext import lv, vis, hid, lin, add_lvs
lvs = (lv(1, "c", vis, 'extent_count = 8\ntype = "cache"\ncache_pool = "cpool"\norigin = "c_corig"')
       + lv(2, "c_corig", hid, lin(8, 0))
       + lv(3, "cpool", hid, 'extent_count = 4\ntype = "cache-pool"\ndata = "cpool_cdata"\n'
            'metadata = "cpool_cmeta"\nmetadata_format = 2\nchunk_size = 128\ncache_mode = "writeback"')
       + lv(4, "cpool_cdata", hid, lin(4, 8))
       + lv(5, "cpool_cmeta", hid, lin(4, 12))
       + lv(6, "r", vis, 'extent_count = 8\ntype = "raid5"\ndevice_count = 3\nstripe_size = 128\n'
            'region_size = 1024\nraids = ["r_rmeta_0", "r_rimage_0", "r_rmeta_1", "r_rimage_1", '
            '"r_rmeta_2", "r_rimage_2"]'))
for i in range(3):
    lvs += lv(7 + 2 * i, "r_rmeta_%d" % i, hid, lin(1, 16 + 5 * i))
    lvs += lv(8 + 2 * i, "r_rimage_%d" % i, hid, lin(4, 17 + 5 * i))
add_lvs(sys.argv[1], lvs)
EOT
      {
        echo '<superblock uuid="" block_size="128" nr_cache_blocks="4" policy="smq" hint_width="4">'
        echo '<mappings>'
        echo '<mapping cache_block="2" origin_block="0" dirty="true"/>'
        echo '<mapping cache_block="0" origin_block="3" dirty="false"/>'
        echo '</mappings>'
        echo '</superblock>'
      } > "$tmp/cache.xml"
      truncate -s 256K "$tmp/cmeta.bin"
      if vgcfgrestore --driverloaded n -q --force -f "$tmp/vgc.txt" "$vg" > /dev/null 2>&1 &&
        cache_restore -q -i "$tmp/cache.xml" -o "$tmp/cmeta.bin" > /dev/null 2>&1; then
        pe=$(pvs --driverloaded n --noheadings --units b --nosuffix -o pe_start "$loop" 2> /dev/null | tr -d ' ')
        python3 - "$img" "$out/seed2.img" "$tmp/cmeta.bin" "$pe" << 'EOT'
import sys
img, seed, meta, pe = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
E = 64 << 10
fs = open(seed, "rb").read()[: 8 * E].ljust(8 * E, b"\0")
with open(img, "r+b") as f:
    def put(extent, data):
        f.seek(pe + extent * E)
        f.write(data)
    put(0, fs)  # the origin
    put(8 + 2, fs[:E])  # cache block 2: origin block 0
    put(8 + 0, fs[3 * E : 4 * E])  # cache block 0: origin block 3
    put(12, open(meta, "rb").read())
    # RAID5, left-symmetric, three images: chunk c in stripe c // 2, parity on
    # image 2 - stripe % 3, data on the images after it in turn.
    images = [bytearray(4 * E) for _ in range(3)]
    for c in range(8):
        stripe, d = divmod(c, 2)
        par = 2 - stripe % 3
        dev = (par + 1 + d) % 3
        chunk = fs[c * E : (c + 1) * E]
        images[dev][stripe * E : (stripe + 1) * E] = chunk
        for i in range(E):
            images[par][stripe * E + i] ^= chunk[i]
    for i in range(3):
        put(17 + 5 * i, bytes(images[i]))
EOT
      else
        rm -f "$img"
      fi
    else
      rm -f "$img"
    fi
    losetup -d "$loop"
  fi
fi
# A WOF-compressed file ("Compact OS", XPRESS4K, 10000 bytes): chunk 0 is XPRESS (all
# 512 symbols 9 bits long; the literal 'A', then symbol 271, a match at offset 1 whose
# length 4092 + 3 follows in bytes: "A" x 4096), chunks 1 and 2 are stored raw.
wof() {
  : > "$1"
  truncate -s 10000 "$1"
  {
    printf '\x09\x01\x00\x00\x09\x11\x00\x00' # chunk table: 265, 4361
    for _ in $(seq 256); do printf '\x99'; done
    printf '\xc3\x20\x00\xc0\x00\x00\xff\xfc\x0f'
    head -c 4096 /dev/zero | tr '\0' 'B'
    head -c 1808 /dev/zero | tr '\0' 'C'
  } > "$1:WofCompressedData"
  setfattr -n system.ntfs_reparse_data -v 0x170000801000000001000000020000000100000000000000 "$1"
}
# The same with LZX (40000 bytes of "line N ok" after a CALL, two chunks): the stream
# is the resource wimlib-imagex 1.13.5 wrote for that file (`capture --compress=LZX
# --chunk-size=32K`), a verbatim block per chunk.
wofx() {
  : > "$1"
  truncate -s 40000 "$1"
  printf '\x6c\x00\x00\x00\x00\x33\x00\x00\x00\x00\x00\x22\x33\x00\xa9\x32\xb6\x44\xf0\xdb\x89\x36\x16\x21\xfe\x2e\xe7\xfd\x00\x0d\x00\x00\x00\x00\x80\x00\x0c\x01\xeb\x42\xbf\x07\x3e\x2f\xc0\xf9\x00\x00\x00\x00\x00\x00\x44\x00\x13\x02\xef\x13\xef\xbe\xb4\x5d\xbf\xb4\xd0\x9f\x14\xde\xb8\x8e\x5c\x38\x97\xae\xc5\x6b\xf2\xed\x00\x40\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x30\xc4\x21\x00\x02\x00\x00\x00\x00\x00\x32\x42\x00\x6d\x4e\xeb\x05\x79\xdb\x80\xb4\x2d\x8a\xf5\xfb\x00\x80\x00\x00\x00\x00\x00\x08\xc4\x0c\x59\x39\xa9\xc9\xce\xf7\x00\x00\x00\x00\x00\x00\x02\x00\x10\x33\x7d\x9f\xfa\xf7\x6a\x47\xd8\xc3\xfe\x6a\xd9\x62\xf2\xe1\x45\xfd\x4d\x49\x7d\x53\x00\x20\x00\x00\x00\x00\x18\x00' > "$1:WofCompressedData"
  setfattr -n system.ntfs_reparse_data -v 0x170000801000000001000000020000000100000001000000 "$1"
}
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
    wof "$tmp/m/wof.exe"
    wofx "$tmp/m/wofx.txt"
    # What system.ntfs_* reads apart from the file: an object id ($ObjId:$O), a
    # security descriptor of its own ($Secure), extended attributes ($EA).
    setfattr -n system.ntfs_object_id -v 0x000102030405060708090a0b0c0d0e0f "$tmp/m/a"
    setfattr -n system.ntfs_acl -v 0x010004801400000024000000000000003400000001020000000000052000000020020000010200000000000520000000200200000200$(
      )1c000100000000031400ff011f00010100000000000100000000 "$tmp/m/c/text"
    setfattr -n system.ntfs_ea -v 0x14000000000404004e414d450056414c55000000 "$tmp/m/c"
    umount "$tmp/m"
    # ntfs-3g finishes writing after the unmount returns: wait for it to exit.
    while pgrep -f "ntfs-3g.*$img" > /dev/null; do sleep 0.1; done
  done
fi
echo "seeds in $out"
