#!/usr/bin/env python3
"""forget on a filesystem that cannot punch holes (ntfs-3g, as on a USB backup drive):
ten points of the benches' 6 GiB ext4 image, each changing 3 % of its 64 KiB blocks,
in a safe on an ntfs-3g-mounted 12 GiB image file; `forget --keep-last 1` from cold
caches, the packs' size before and after, and a fresh safe of the last image beside.
Needs root, ntfs-3g, and bench.py's image (it builds it). Run: sudo python3
bench/forget-no-punch.py"""
import os
import subprocess
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench
W = bench.W
img = os.path.join(W, "img-nopunch")
vol = os.path.join(W, "ntfs-safe.img")
mnt = os.path.join(W, "nm")
os.makedirs(mnt, exist_ok=True)
bench.make_image()
bench.sh(f"cp {bench.IMG} {img}")
bench.sh(f"rm -f {vol}; truncate -s 12G {vol} && mkfs.ntfs -Q -F {vol} > /dev/null 2>&1 && ntfs-3g {vol} {mnt}")
safe = os.path.join(mnt, "safe")
try:
    for i in range(10):
        if i:
            bench.change_blocks(img, 0.03, 5000 + i)
        bench.sh(f"{bench.DS} backup {safe} disk={img} > /dev/null 2>&1")
    before = bench.du(os.path.join(safe, "packs"))
    bench.drop_caches()
    t = time.perf_counter()
    r = subprocess.run([bench.DS, "forget", safe, "--keep-last", "1"], capture_output=True, text=True)
    dt = time.perf_counter() - t
    after = bench.du(os.path.join(safe, "packs"))
    print(r.stderr.strip().splitlines()[-1])
    print(f"ntfs-3g safe, 10 points (3% of blocks each), forget --keep-last 1: {dt:.2f} s, packs {before/2**20:.0f} MiB -> {after/2**20:.0f} MiB")
    want = bench.out(f"sha256sum {img}").split()[0]
    got = bench.out(f"{bench.DS} restore {safe} latest disk - | sha256sum").split()[0]
    print("latest equals image:", got == want)
    fresh = os.path.join(W, "safe-fresh-np")
    bench.sh(f"rm -rf {fresh}; {bench.DS} backup {fresh} disk={img} > /dev/null 2>&1")
    print(f"a fresh safe of the image: {bench.du(os.path.join(fresh, 'packs'))/2**20:.0f} MiB")
    bench.sh(f"rm -rf {fresh}")
finally:
    bench.sh(f"umount {mnt}")
    os.remove(img); os.remove(vol)
