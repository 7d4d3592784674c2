#!/bin/bash
# Reads the security descriptor (system.ntfs_acl) and the DOS attributes of each of
# 20 000 files through a fresh disksafe mount and through ntfs-3g -o ro, on one NTFS
# image (200 distinct descriptors, so $Secure:$SII has INDX nodes). Needs root,
# mkntfs and ntfs-3g.
# Usage: sudo bash bench/ntfs-acl.sh [DISKSAFE]
set -eu
D=${1:-$(dirname "$0")/../target/release/disksafe}
W=$(mktemp -d /var/tmp/disksafe-acl.XXXXXX)
trap 'umount "$W/m" 2> /dev/null || true; "$D" umount "$W/d" 2> /dev/null || true; rm -rf "$W"' EXIT
mkdir "$W/m" "$W/d"
truncate -s 256M "$W/acl.img"
mkntfs -F -q -Q "$W/acl.img" > /dev/null 2>&1
ntfs-3g "$W/acl.img" "$W/m"
python3 - "$W/m" << 'PY'
import os, sys
d = os.path.join(sys.argv[1], "d")
os.mkdir(d)
head = bytes.fromhex("0100048014000000240000000000000034000000010200000000000520000000"
                     "200200000102000000000005200000002002000002001c000100000000031400")
everyone = bytes.fromhex("010100000000000100000000")
for i in range(20000):
    p = os.path.join(d, f"f{i:05}")
    open(p, "w").write(str(i))
    if i % 100 == 0:
        os.setxattr(p, "system.ntfs_acl", head + (0x120000 | i // 100).to_bytes(4, "little") + everyone)
PY
umount "$W/m"
"$D" backup "$W/safe" "v=$W/acl.img" > /dev/null 2>&1
walk() {
    python3 - "$1" << 'PY'
import os, sys, time
d = sys.argv[1]
files = [os.path.join(d, f) for f in sorted(os.listdir(d))]
for name in ["system.ntfs_attrib", "system.ntfs_acl", "system.ntfs_acl"]:
    t = time.time()
    for f in files:
        os.getxattr(f, name, follow_symlinks=False)
    print(f"  {name}: {len(files)} files in {time.time() - t:.2f} s")
PY
}
sync; echo 3 > /proc/sys/vm/drop_caches
"$D" mount "$W/safe" "$W/d" > /dev/null
echo "disksafe"; walk "$W/d/1/v/files/d"
"$D" umount "$W/d"
sync; echo 3 > /proc/sys/vm/drop_caches
ntfs-3g -o ro "$W/acl.img" "$W/m"
echo "ntfs-3g -o ro"; walk "$W/m/d"
