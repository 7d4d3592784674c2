#!/usr/bin/env python3
"""Benchmarks of disksafe against its peers, side by side in one run.

    sudo python3 bench/bench.py safe     # issue: the disk safe (backup/restore/index)
    sudo python3 bench/bench.py mount    # issue: the FUSE mount
    sudo python3 bench/bench.py ext       # issue: ext file trees (find, tar)
    sudo python3 bench/bench.py xfs       # XFS file trees (find, tar) vs the kernel
    sudo python3 bench/bench.py btrfs     # btrfs (zstd-compressed) file trees vs the kernel
    sudo python3 bench/bench.py ntfs      # issue: NTFS file trees (find, tar) vs ntfs-3g
    sudo python3 bench/bench.py blocksize
    sudo python3 bench/bench.py coldseq   # where cold sequential reads spend, GiB by GiB
    sudo python3 bench/bench.py forget    # removing old points vs restic prune, qcow2 commit
    sudo python3 bench/bench.py skipfree  # a first backup leaving out free space vs partclone

Needs root (mkfs, drop_caches, FUSE), the packages zstd fio restic qemu-utils e2fsprogs,
and ~20 GB free under $BENCH_DIR (default /var/tmp/disksafe-bench). Prints one line per
measurement and the ratios the issues set targets for.
"""
import contextlib
import glob
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W = os.environ.get("BENCH_DIR", "/var/tmp/disksafe-bench")
DS = os.path.join(ROOT, "target/release/disksafe")
EX = os.path.join(ROOT, "target/release/examples")
IMG = os.path.join(W, "usr.img")
BS = 65536


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, **kw)


def out(cmd):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout


def timed(cmd):
    t = time.perf_counter()
    sh(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def drop_caches():
    sh("sync; echo 3 > /proc/sys/vm/drop_caches")


def warm(path):
    sh(f"cat {path} > /dev/null")


def report(name, secs, nbytes):
    print(f"  {name:<44} {secs:8.2f} s  {nbytes / secs / 1e6:9.0f} MB/s", flush=True)
    return nbytes / secs


DAMON = "/sys/kernel/mm/damon/admin/kdamonds"


def damon_pageout():
    """Running kdamonds with a `pageout` scheme: they evict memory left idle (on this
    project's VMs, page cache untouched for 30 s), so a warm pass is partly cold."""
    found = []
    for k in glob.glob(f"{DAMON}/*"):
        try:
            if open(f"{k}/state").read().strip() != "on":
                continue
            if any(open(a).read().strip() == "pageout" for a in glob.glob(f"{k}/contexts/*/schemes/*/action")):
                found.append(k)
        except OSError:
            pass
    return found


@contextlib.contextmanager
def damon_paused(kdamonds):
    """Stops the given kdamonds for the block, and starts them again after it."""
    for k in kdamonds:
        sh(f"echo off > {k}/state")
    try:
        yield
    finally:
        for k in kdamonds:
            sh(f"echo on > {k}/state")


def make_ext4_from(img, dirs, size):
    """Makes IMG (SIZE, e.g. "6G") an ext4 holding copies of DIRS, unless it exists."""
    os.makedirs(W, exist_ok=True)
    if os.path.exists(img):
        return
    stage = img + ".stage"
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    for d in dirs:
        sh(f"cp -a {d} {stage}/ 2>/dev/null || true")
    sh(f"truncate -s {size} {img} && mkfs.ext4 -q -F -d {stage} {img}")
    shutil.rmtree(stage)


def make_image():
    make_ext4_from(IMG, ["/usr/lib", "/usr/share", "/usr/bin"], "6G")


def change_blocks(path, fraction, seed, region=None):
    """Overwrites 4 KiB in `fraction` of the 64 KiB blocks; returns the ranges file."""
    rnd = random.Random(seed)
    size = os.path.getsize(path)
    nblocks = size // BS
    lo, hi = (0, nblocks) if region is None else region
    picks = rnd.sample(range(lo, hi), int((hi - lo) * fraction) if region else int(nblocks * fraction))
    ranges = os.path.join(W, f"changes.{seed}")
    with open(path, "r+b") as f, open(ranges, "w") as r:
        for b in picks:
            off = b * BS + rnd.randrange(0, BS - 4096)
            f.seek(off)
            f.write(rnd.randbytes(4096))
            r.write(f"{off} 4096\n")
    return ranges


def du(path):
    return int(out(f"du -sb {path}").split()[0])


def bench_safe():
    make_image()
    size = os.path.getsize(IMG)
    print(f"image: {IMG}, {size / 2**30:.2f} GiB (ext4 filled from /usr)")
    s1 = os.path.join(W, "safe1")
    shutil.rmtree(s1, ignore_errors=True)
    warm(IMG)
    print("first full backup vs zstd -1 -T0 (image in page cache):")
    z = report("zstd -1 -T0", timed(f"zstd -1 -T0 -c {IMG} > /dev/null"), size)
    d = report("disksafe backup (new safe)", timed(f"{DS} backup {s1} disk={IMG}"), size)
    print(f"  ratio disksafe/zstd speed: {d / z:.2f}  (target >= 0.8)")
    uniq = out(f"{EX}/unique_size {BS} 1 {IMG}").split()
    packed = int(uniq[5])
    safe_size = du(s1)
    print(f"  safe size {safe_size} B vs compressed unique data {packed} B: "
          f"{(safe_size / packed - 1) * 100:+.2f}%  (target within 2%)")
    print("incremental backup, 1% of blocks changed, vs cat (page cache):")
    change_blocks(IMG, 0.01, 1)
    warm(IMG)
    c = report("cat > /dev/null", timed(f"cat {IMG} > /dev/null"), size)
    f = report("disksafe backup (full scan)", timed(f"{DS} backup {s1} disk={IMG}"), size)
    ranges = change_blocks(IMG, 0.01, 2)
    warm(IMG)
    t = timed(f"{DS} backup {s1} disk={IMG} --changed-blocks disk={ranges}")
    cb = report("disksafe backup --changed-blocks", t, size)
    print(f"  ratio full-scan/cat speed: {f / c:.2f}  (target >= 0.7); "
          f"--changed-blocks/cat: {cb / c:.1f}")
    print("restore vs cp (written to the same filesystem and synced; best of 2, alternating):")
    o1, o2 = os.path.join(W, "restored.img"), os.path.join(W, "copied.img")
    tr, tc = [], []
    for _ in range(2):
        warm(IMG)
        tr.append(timed(f"{DS} restore {s1} latest disk {o1}; sync {o1}"))
        os.remove(o1)
        sh("sync")
        tc.append(timed(f"cp {IMG} {o2}; sync {o2}"))
        os.remove(o2)
        sh("sync")
    r = report("disksafe restore", min(tr), size)
    cp = report("cp", min(tc), size)
    d0 = report("disksafe restore to /dev/null (decode only)", timed(f"{DS} restore {s1} latest disk - > /dev/null"), size)
    print(f"  ratio restore/cp speed: {r / cp:.2f}")
    print("random 10% of blocks at point 1 vs point 200 of a 200-point safe:")
    s3 = make_200(size)
    res = {"1": 0.0, "200": 0.0}
    for seed in [7, 8, 9]:
        for p in ["1", "200"]:
            sh(f"{EX}/bench_read {s3} {p} disk 0.1 {seed} > /dev/null")  # page cache warm for both
        for p in ["1", "200"]:
            line = out(f"{EX}/bench_read {s3} {p} disk 0.1 {seed}")
            res[p] += float(line.split(" in ")[1].split()[0])
            print("  " + line.strip())
    print(f"  ratio point 200 time / point 1 time (3 seeds): {res['200'] / res['1']:.2f}  (target <= 1.1)")


def make_200(size):
    """A 200-point safe: every point changes 0.2% of blocks, all within one 10% region,
    so the hot blocks carry up to 200 versions."""
    s3 = os.path.join(W, "safe200")
    if os.path.exists(os.path.join(s3, "done")):
        return s3
    shutil.rmtree(s3, ignore_errors=True)
    img = os.path.join(W, "img200")
    shutil.copy(IMG, img)
    sh(f"{DS} backup {s3} disk={img} > /dev/null 2>&1")
    nblocks = size // BS
    region = (nblocks // 3, nblocks // 3 + nblocks // 10)
    for i in range(199):
        ranges = change_blocks(img, 0.02, 1000 + i, region)
        sh(f"{DS} backup {s3} disk={img} --changed-blocks disk={ranges} > /dev/null 2>&1")
    os.remove(img)
    open(os.path.join(s3, "done"), "w").close()
    return s3


def fio_randread(path, secs=10):
    j = out(f"fio --name=r --filename={path} --rw=randread --bs=4k --ioengine=psync "
            f"--numjobs=4 --runtime={secs} --time_based --group_reporting "
            f"--output-format=json --readonly")
    return json.loads(j)["jobs"][0]["read"]["iops"]


def seq_read(path):
    size = os.path.getsize(path)
    t = timed(f"dd if={path} of=/dev/null bs=1M")
    return size / t


def fresh_fill(size):
    """Bytes per second at which this machine fills memory nobody touched lately (zeros
    written to tmpfs): every cold read through a page cache fills as much."""
    path = "/dev/shm/disksafe-bench-fill"
    try:
        return size / timed(f"dd if=/dev/zero of={path} bs=1M count={size >> 20}")
    finally:
        os.remove(path)


def med(xs):
    return statistics.median(xs)


def span(xs):
    return f"[{min(xs) / 1e6:.0f}-{max(xs) / 1e6:.0f}]"


def bench_mount():
    make_image()
    size = os.path.getsize(IMG)
    s1 = os.path.join(W, "safe-mount")
    if not os.path.exists(s1):
        shutil.rmtree(s1, ignore_errors=True)
        sh(f"{DS} backup {s1} disk={IMG} > /dev/null 2>&1")
    mnt = os.path.join(W, "mnt")
    os.makedirs(mnt, exist_ok=True)

    def ds_start():
        sh(f"{DS} mount {s1} {mnt} --cache 512M --log {W}/mount.log 2>/dev/null")
        return f"{mnt}/1/disk/disk.img"

    def ds_stop():
        sh(f"{DS} umount {mnt}")
        time.sleep(0.5)

    memmnt = os.path.join(W, "memmnt")
    os.makedirs(memmnt, exist_ok=True)
    mem = {}

    def mem_start():
        mem["p"] = subprocess.Popen([f"{EX}/memfuse", memmnt, str(size >> 20)])
        while not os.path.exists(f"{memmnt}/file"):
            time.sleep(0.05)
        return f"{memmnt}/file"

    def mem_stop():
        mem["p"].terminate()
        mem["p"].wait()

    # qcow2: the image as a zstd-compressed base plus a 10-deep chain of overlays.
    q = os.path.join(W, "qcow")
    qfile = os.path.join(W, "qcow-export")
    if not os.path.exists(f"{q}/l10.qcow2"):
        shutil.rmtree(q, ignore_errors=True)
        os.makedirs(q)
        sh(f"qemu-img convert -c -O qcow2 -o compression_type=zstd {IMG} {q}/l0.qcow2")
        rnd = random.Random(5)
        for i in range(1, 11):
            sh(f"qemu-img create -q -f qcow2 -o compression_type=zstd -b l{i-1}.qcow2 -F qcow2 {q}/l{i}.qcow2")
            cmds = " ".join(f"-c 'write -P {i} {rnd.randrange(size // BS) * BS} 4k'" for _ in range(200))
            sh(f"qemu-io {cmds} {q}/l{i}.qcow2 > /dev/null")
    qsd = {}

    def q_start():
        open(qfile, "w").close()
        qsd["p"] = subprocess.Popen([
            "qemu-storage-daemon", "--blockdev",
            f"driver=file,node-name=f,filename={q}/l10.qcow2,read-only=on",
            "--blockdev", "driver=qcow2,node-name=top,file=f,read-only=on",
            "--export", f"type=fuse,id=e,node-name=top,mountpoint={qfile}"],
            stderr=subprocess.DEVNULL)
        for _ in range(200):
            if os.path.getsize(qfile) > 0:
                break
            time.sleep(0.05)
        return qfile

    def q_stop():
        qsd["p"].terminate()
        qsd["p"].wait()

    repo = os.path.join(W, "restic")
    rmnt = os.path.join(W, "rmnt")
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=repo)
    if not os.path.exists(repo):
        subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
        subprocess.run(["restic", "backup", IMG], env=env, check=True, capture_output=True)
    os.makedirs(rmnt, exist_ok=True)
    rs = {}

    def r_start():
        rs["p"] = subprocess.Popen(["restic", "mount", rmnt], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        path = f"{rmnt}/snapshots/latest{IMG}"
        for _ in range(400):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        return path

    def r_stop():
        rs["p"].terminate()
        rs["p"].wait()
        subprocess.run(["umount", rmnt], capture_output=True)

    peers = [("disksafe mount", ds_start, ds_stop), ("memfuse (FUSE ceiling)", mem_start, mem_stop),
             ("qcow2 10-deep chain (qsd fuse)", q_start, q_stop), ("restic mount", r_start, r_stop)]
    rounds = int(os.environ.get("ROUNDS", "3"))
    print(f"image: {size / 2**30:.2f} GiB; sequential = dd bs=1M, random = fio 4k randread, 4 jobs, 10 s;")
    print(f"sequential in {rounds} rounds, each on a fresh mount with caches dropped, the peers'")
    print("order rotated each round (whoever fills fresh page cache first can pay more on VMs")
    print("whose host backs memory lazily); figures are medians, ranges in brackets")
    res = {}
    warm(IMG)
    res["cat"] = {"warm_seq": size / timed(f"cat {IMG} > /dev/null")}
    print(f"  {'cat of the source (page cache)':<34} warm seq {res['cat']['warm_seq'] / 1e6:8.0f} MB/s")
    seq = {p[0]: [] for p in peers}
    fills = []
    for r in range(rounds):
        drop_caches()
        fills.append(fresh_fill(size))
        for name, start, stop in peers[r % len(peers):] + peers[:r % len(peers)]:
            drop_caches()
            path = start()
            seq[name].append((seq_read(path), seq_read(path)))
            stop()
    print(f"  {'fresh memory fill (dd to /dev/shm)':<34} {med(fills) / 1e6:8.0f} MB/s {span(fills)}:"
          " one thread filling page cache")
    for name, start, stop in peers:
        cold, warm_ = [c for c, _ in seq[name]], [w for _, w in seq[name]]
        r = {"cold_seq": med(cold), "warm_seq": med(warm_)}
        drop_caches()
        path = start()
        r["cold_iops"] = fio_randread(path)
        r["warm_iops"] = fio_randread(path)
        stop()
        res[name] = r
        print(f"  {name:<34} cold seq {r['cold_seq'] / 1e6:6.0f} MB/s {span(cold)}  warm seq {r['warm_seq'] / 1e6:6.0f} MB/s"
              f" {span(warm_)}  cold 4k {r['cold_iops']:7.0f} IOPS  warm 4k {r['warm_iops']:7.0f} IOPS", flush=True)
    d, m, q2, rr = (res[p[0]] for p in peers)
    print(f"  warm seq disksafe/FUSE ceiling: {d['warm_seq'] / m['warm_seq']:.2f} (target >= 0.9)")
    print(f"  cold seq disksafe/qcow2: {d['cold_seq'] / q2['cold_seq']:.2f} (>= 2); /restic: {d['cold_seq'] / rr['cold_seq']:.2f} (>= 5);"
          f" /memfuse cold: {d['cold_seq'] / m['cold_seq']:.2f}")
    print(f"  cold 4k disksafe/qcow2: {d['cold_iops'] / q2['cold_iops']:.2f} (>= 2); /restic: {d['cold_iops'] / rr['cold_iops']:.2f} (>= 5)")
    kd = damon_pageout()
    if kd:
        print("sequential again with the machine's DAMON pageout scheme paused (it evicts page cache")
        print("left idle for 30 s, so the warm passes above were partly cold):")
        paused = {}
        with damon_paused(kd):
            for name, start, stop in peers[:2]:
                drop_caches()
                path = start()
                cold = seq_read(path)
                paused[name] = seq_read(path)
                stop()
                print(f"  {name:<34} cold seq {cold / 1e6:8.0f} MB/s  warm seq {paused[name] / 1e6:8.0f} MB/s", flush=True)
        print(f"  warm seq disksafe/FUSE ceiling, pageout paused: {paused[peers[0][0]] / paused[peers[1][0]]:.2f} (target >= 0.9)")
    s3 = make_200(size)
    print("point 1 vs point 200 of a 200-point safe, through the mount (cold):")
    for p in ["1", "200"]:
        drop_caches()
        sh(f"{DS} mount {s3} {mnt} --log {W}/mount.log 2>/dev/null")
        path = f"{mnt}/{p}/disk/disk.img"
        seq = seq_read(path)
        ds_stop()
        drop_caches()
        sh(f"{DS} mount {s3} {mnt} --log {W}/mount.log 2>/dev/null")
        iops = fio_randread(path)
        ds_stop()
        print(f"  point {p:>3}: cold seq {seq / 1e6:8.0f} MB/s  cold 4k {iops:9.0f} IOPS", flush=True)


def cold_find_tar(peers, sub, limit):
    """For each (name, mount, unmount) peer, times `find | wc -l` over its root and
    `tar cf - SUB | wc -c`, each on a fresh mount with caches dropped. Returns
    {name: (find seconds, tar bytes per second)}."""
    rows = {}
    for name, on, off in peers:
        drop_caches()
        root = on()
        t0 = time.perf_counter()
        n = int(out(f"timeout {limit} find {root} | wc -l"))
        tf = time.perf_counter() - t0
        off()
        drop_caches()
        root = on()
        t0 = time.perf_counter()
        nbytes = int(out(f"timeout {limit} tar cf - -C {root}/{sub} . | wc -c"))
        tt = time.perf_counter() - t0
        off()
        rows[name] = (tf, nbytes / tt)
        print(f"  {name:<20} find {n} entries in {tf:6.2f} s   tar of {sub}: {nbytes / 1e6:.0f} MB at {nbytes / tt / 1e6:6.0f} MB/s", flush=True)
    return rows


def bench_ext():
    """find and tar over the file tree: disksafe vs the kernel (ro,noload) vs fuse2fs,
    on a pristine ext4 image (the safe benchmark scribbles over usr.img)."""
    img = os.path.join(W, "usrfs.img")
    make_ext4_from(img, ["/usr/share", "/usr/bin", "/usr/lib/x86_64-linux-gnu"], "5G")
    IMG_EXT = img
    s1 = os.path.join(W, "safe-ext")
    if not os.path.exists(s1):
        sh(f"{DS} backup {s1} disk={IMG_EXT} > /dev/null 2>&1")
    mnt = os.path.join(W, "extmnt")
    os.makedirs(mnt, exist_ok=True)
    sub = "share"  # tar over one subtree (~0.7 GB) so fuse2fs finishes in time

    def kernel_on():
        sh(f"mount -o ro,noload,loop {IMG_EXT} {mnt}")
        return mnt

    def kernel_off():
        sh(f"umount {mnt}")

    def f2_on():
        sh(f"fuse2fs -o ro {IMG_EXT} {mnt} > /dev/null 2>&1")
        return mnt

    def f2_off():
        sh(f"umount {mnt}")
        time.sleep(0.5)

    def ds_on():
        sh(f"{DS} mount {s1} {mnt} --log {W}/mount.log 2>/dev/null")
        return f"{mnt}/1/disk/files"

    def ds_off():
        sh(f"{DS} umount {mnt}")
        time.sleep(0.5)

    rows = cold_find_tar([("kernel (ro,noload)", kernel_on, kernel_off), ("disksafe", ds_on, ds_off),
                          ("fuse2fs", f2_on, f2_off)], sub, 600)
    k, d, f = rows["kernel (ro,noload)"], rows["disksafe"], rows["fuse2fs"]
    print(f"  find time disksafe/kernel: {d[0] / k[0]:.2f} (target <= 1.5); disksafe vs fuse2fs: {f[0] / d[0]:.1f}x faster")
    print(f"  tar throughput disksafe/kernel: {d[1] / k[1]:.2f} (target >= 0.7); disksafe vs fuse2fs: {d[1] / f[1]:.1f}x")


def bench_kernel_fs(name, mkfs, fill_opts, ro_opts):
    """find and tar over a tree of filesystem `name` (the same /usr copy as the ext
    benchmark, written by the kernel mounted with `fill_opts`): disksafe vs the
    kernel's own read-only mount (`ro_opts`), each cold."""
    img = os.path.join(W, f"usr{name}.img")
    mnt = os.path.join(W, f"{name}mnt")
    os.makedirs(mnt, exist_ok=True)
    if not os.path.exists(img):
        sh(f"truncate -s 5G {img} && {mkfs} {img}")
        sh(f"mount -o loop,{fill_opts} {img} {mnt}")
        for d in ["/usr/share", "/usr/bin", "/usr/lib/x86_64-linux-gnu"]:
            sh(f"cp -a {d} {mnt}/ 2>/dev/null || true")
        sh(f"umount {mnt}")
    s1 = os.path.join(W, f"safe-{name}")
    if not os.path.exists(s1):
        sh(f"{DS} backup {s1} disk={img} > /dev/null 2>&1")

    def kernel_on():
        sh(f"mount -o {ro_opts},loop {img} {mnt}")
        return mnt

    def kernel_off():
        sh(f"umount {mnt}")

    def ds_on():
        sh(f"{DS} mount {s1} {mnt} --log {W}/mount.log 2>/dev/null")
        return f"{mnt}/1/disk/files"

    def ds_off():
        sh(f"{DS} umount {mnt}")
        time.sleep(0.5)

    rows = cold_find_tar([("kernel (ro)", kernel_on, kernel_off), ("disksafe", ds_on, ds_off)], "share", 600)
    k, d = rows["kernel (ro)"], rows["disksafe"]
    print(f"  find time disksafe/kernel: {d[0] / k[0]:.2f}; tar throughput disksafe/kernel: {d[1] / k[1]:.2f}")


def bench_xfs():
    bench_kernel_fs("xfs", "mkfs.xfs -q -f", "defaults", "ro,norecovery")


def bench_btrfs():
    """As bench_xfs, on btrfs written with compress=zstd:1 (Fedora's default)."""
    bench_kernel_fs("btrfs", "mkfs.btrfs -q -f", "compress=zstd:1", "ro")


def bench_ntfs():
    """find and tar over an NTFS tree filled from /usr through ntfs-3g: disksafe vs
    ntfs-3g -o ro of the same image, each cold (caches dropped, fresh mount)."""
    img = os.path.join(W, "usr-ntfs.img")
    mnt = os.path.join(W, "ntfsmnt")
    os.makedirs(mnt, exist_ok=True)
    if not os.path.exists(img):
        sh(f"truncate -s 3G {img}.tmp && mkntfs -F -q -Q {img}.tmp > /dev/null 2>&1")
        sh(f"ntfs-3g {img}.tmp {mnt}")
        for d in ["/usr/share", "/usr/lib/x86_64-linux-gnu"]:
            sh(f"cp -a {d} {mnt}/ 2>/dev/null || true")
        sh(f"umount {mnt}")
        time.sleep(2)
        os.rename(f"{img}.tmp", img)
    safe = os.path.join(W, "safe-ntfs")
    if not os.path.exists(safe):
        sh(f"{DS} backup {safe} win={img} > /dev/null 2>&1")

    def n3_on():
        sh(f"ntfs-3g -o ro {img} {mnt}")
        return mnt

    def n3_off():
        sh(f"umount {mnt}")
        time.sleep(1)

    def ds_on():
        sh(f"{DS} mount {safe} {mnt} --log {W}/mount-ntfs.log 2>/dev/null")
        return f"{mnt}/1/win/files"

    def ds_off():
        sh(f"{DS} umount {mnt}")
        time.sleep(0.5)

    rows = cold_find_tar([("ntfs-3g -o ro", n3_on, n3_off), ("disksafe", ds_on, ds_off)], ".", 900)
    n3, d = rows["ntfs-3g -o ro"], rows["disksafe"]
    print(f"  find: disksafe {n3[0] / d[0]:.2f}x faster than ntfs-3g (target >= 1.5)")
    print(f"  tar:  disksafe {d[1] / n3[1]:.2f}x ntfs-3g's throughput (target >= 1.5)")


def bench_blocksize():
    make_image()
    size = os.path.getsize(IMG)
    print("block size: safe size, full backup time, random 4 KiB reads (fresh cache)")
    for bs in ["16K", "64K", "256K", "1M"]:
        s = os.path.join(W, f"bs-{bs}")
        shutil.rmtree(s, ignore_errors=True)
        warm(IMG)
        t = timed(f"{DS} backup {s} --block-size {bs} disk={IMG}")
        line = out(f"{EX}/bench_read {s} 1 disk 0.02 3")
        line = out(f"{EX}/bench_read {s} 1 disk 0.02 3")
        rps = float(line.split(" = ")[1].split()[0])
        print(f"  {bs:>5}: safe {du(s) / 2**20:8.0f} MiB  backup {size / t / 1e6:6.0f} MB/s  random reads {rps:8.0f}/s", flush=True)
        shutil.rmtree(s)

def proc_cpu(pid):
    """CPU seconds (user + system) a process has used so far."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def bench_coldseq():
    """A cold sequential read of the mount bench's image, GiB by GiB, through disksafe
    and through memfuse (the same bytes served from memory: the FUSE ceiling), with
    each server's CPU seconds per GiB. Shows where the ceiling itself falls: on VMs
    whose host backs guest memory lazily, the kernel's copy of replies into fresh page
    cache pages slows down several-fold once a few GiB have been filled."""
    size = os.path.getsize(IMG)
    s1 = os.path.join(W, "safe-mount")
    if not os.path.exists(s1):
        sh(f"{DS} backup {s1} disk={IMG} > /dev/null 2>&1")
    mnt, memmnt = os.path.join(W, "mnt"), os.path.join(W, "memmnt")
    os.makedirs(mnt, exist_ok=True)
    os.makedirs(memmnt, exist_ok=True)
    gibs = size >> 30

    def per_gib(path, pid):
        rows = []
        for g in range(gibs):
            c = proc_cpu(pid)
            t = timed(f"dd if={path} of=/dev/null bs=1M skip={g * 1024} count=1024")
            rows.append(((1 << 30) / t, proc_cpu(pid) - c))
        return rows

    drop_caches()
    said = out(f"{DS} mount {s1} {mnt} --cache 512M --log {W}/mount.log 2>&1")
    pid = int(said.split("server pid ")[1].split(",")[0])
    ds = per_gib(f"{mnt}/1/disk/disk.img", pid)
    sh(f"{DS} umount {mnt}")
    time.sleep(0.5)
    drop_caches()
    p = subprocess.Popen([f"{EX}/memfuse", memmnt, str(size >> 20)])
    while not os.path.exists(f"{memmnt}/file"):
        time.sleep(0.05)
    mem = per_gib(f"{memmnt}/file", p.pid)
    p.terminate()
    p.wait()
    print("cold sequential read (dd bs=1M), GiB by GiB: MB/s and the server's CPU seconds")
    print(f"  {'GiB':>4} {'disksafe':>10} {'cpu':>6} {'memfuse':>10} {'cpu':>6} {'ratio':>6}")
    for g, ((d, dc), (m, mc)) in enumerate(zip(ds, mem)):
        print(f"  {g:>4} {d / 1e6:10.0f} {dc:6.2f} {m / 1e6:10.0f} {mc:6.2f} {d / m:6.2f}")


def allocated(path):
    """Bytes a directory tree occupies on disk (punched holes cost nothing)."""
    return int(out(f"du -s --block-size=1 {path}").split()[0])


def bench_forget():
    """Removing the 5 oldest of 10 points (each changing 1% of the image's blocks, 4 KiB
    each, spread over the whole image): `disksafe forget --keep-last 5` against `restic
    forget --keep-last 5 --prune` on the same history, and a qcow2 chain of the same
    writes (zstd base + 9 overlays) thinned by committing the oldest overlays into the
    base and rebasing the next one on it. Time and the space given back."""
    make_image()
    size = os.path.getsize(IMG)
    img = os.path.join(W, "img-forget")
    sf, rf, qf = (os.path.join(W, n) for n in ("safe-forget", "restic-forget", "qcow-forget"))
    for d in (sf, rf, qf):
        shutil.rmtree(d, ignore_errors=True)
    shutil.copy(IMG, img)
    os.makedirs(qf)
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=rf)
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    sh(f"qemu-img convert -c -O qcow2 -o compression_type=zstd {img} {qf}/l0.qcow2")
    print(f"image: {size / 2**30:.2f} GiB; 10 points, each changing 1% of 64 KiB blocks (4 KiB writes)")
    for i in range(10):
        if i > 0:
            rnd = random.Random(3000 + i)
            ranges = change_blocks(img, 0.01, 3000 + i)
            sh(f"qemu-img create -q -f qcow2 -o compression_type=zstd -b l{i-1}.qcow2 -F qcow2 {qf}/l{i}.qcow2")
            offs = [line.split()[0] for line in open(ranges)]
            for k in range(0, len(offs), 200):
                cmds = " ".join(f"-c 'write -P {rnd.randrange(1, 255)} {o} 4k'" for o in offs[k:k + 200])
                sh(f"qemu-io {cmds} {qf}/l{i}.qcow2 > /dev/null")
        sh(f"{DS} backup {sf} disk={img} > /dev/null 2>&1")
        subprocess.run(["restic", "backup", "--quiet", img], env=env, check=True, capture_output=True)
    want = out(f"sha256sum {img}").split()[0]
    before = {"disksafe": allocated(sf), "restic": allocated(rf), "qcow2": allocated(qf)}
    sh("sync")
    drop_caches()
    times = {}
    times["disksafe"] = timed(f"{DS} forget {sf} --keep-last 5")
    drop_caches()
    t = time.perf_counter()
    subprocess.run(["restic", "forget", "--keep-last", "5", "--prune"], env=env, check=True,
                   capture_output=True)
    times["restic"] = time.perf_counter() - t
    drop_caches()
    times["qcow2"] = timed(f"cd {qf} && qemu-img commit -q -b l0.qcow2 l4.qcow2 && "
                           f"qemu-img rebase -u -F qcow2 -b l0.qcow2 l5.qcow2 && "
                           f"rm l1.qcow2 l2.qcow2 l3.qcow2 l4.qcow2")
    after = {"disksafe": allocated(sf), "restic": allocated(rf), "qcow2": allocated(qf)}
    print("forget the 5 oldest points (caches dropped first):")
    for k in ("disksafe", "restic", "qcow2"):
        print(f"  {k:<10} {times[k]:8.2f} s   {before[k] / 2**20:8.0f} MiB -> {after[k] / 2**20:8.0f} MiB"
              f"  (freed {(before[k] - after[k]) / 2**20:.0f} MiB)", flush=True)
    print(f"  time ratios: restic/disksafe {times['restic'] / times['disksafe']:.1f}, "
          f"qcow2/disksafe {times['qcow2'] / times['disksafe']:.1f}")
    got = out(f"{DS} restore {sf} latest disk - | sha256sum").split()[0]
    print(f"  disksafe latest point after forget equals the image: {got == want}")
    os.remove(img)


def bench_skipfree():
    """A first backup of the 6 GiB ext4 image grown to 8 GiB, after 2 GiB of files were written and
    deleted (their data stays in free space, as on a used disk): `disksafe backup`
    reading everything, `disksafe backup --skip-free`, and partclone.ext4 (the imaging
    tool that copies used blocks only) piped through `zstd -1`. Time from cold caches
    and bytes stored; the --skip-free point restored must pass `e2fsck -fn`."""
    make_image()
    img = os.path.join(W, "img-skipfree")
    shutil.copy(IMG, img)
    # Grown to 8 GiB so the deleted 2 GiB fit beside what the image holds.
    sh(f"e2fsck -fy {img} > /dev/null && truncate -s 8G {img} && resize2fs -f {img} > /dev/null 2>&1")
    mnt = os.path.join(W, "skipfree-mnt")
    os.makedirs(mnt, exist_ok=True)
    sh(f"mount -o loop {img} {mnt}")
    try:
        sh(f"head -c 2G /dev/urandom > {mnt}/deleted && sync && rm {mnt}/deleted")
    finally:
        sh(f"umount {mnt}")
    size = os.path.getsize(img)
    used = out(f"dumpe2fs -h {img} 2>/dev/null")
    bsz = int([l.split(":")[1] for l in used.splitlines() if l.startswith("Block size")][0])
    free = int([l.split(":")[1] for l in used.splitlines() if l.startswith("Free blocks")][0]) * bsz
    print(f"image: {size / 2**30:.2f} GiB ext4, {(size - free) / 2**30:.2f} GiB in use, "
          f"2 GiB of deleted data in its free space")
    whole, skip = os.path.join(W, "safe-whole"), os.path.join(W, "safe-skipfree")
    pc = os.path.join(W, "partclone.zst")
    for d in (whole, skip):
        shutil.rmtree(d, ignore_errors=True)
    runs = {
        "disksafe backup": f"{DS} backup {whole} disk={img}",
        "disksafe backup --skip-free": f"{DS} backup {skip} disk={img} --skip-free",
        "partclone.ext4 | zstd -1": f"partclone.ext4 -c -q -s {img} -o - | zstd -1 -q -T0 -f -o {pc}",
    }
    stored = {
        "disksafe backup": lambda: allocated(whole),
        "disksafe backup --skip-free": lambda: allocated(skip),
        "partclone.ext4 | zstd -1": lambda: os.path.getsize(pc),
    }
    times = {}
    for name, cmd in runs.items():
        drop_caches()
        times[name] = timed(cmd)
        print(f"  {name:<30} {times[name]:8.2f} s  {size / times[name] / 1e6:7.0f} MB/s of image"
              f"  stores {stored[name]() / 2**20:8.0f} MiB", flush=True)
    base = times["disksafe backup --skip-free"]
    print(f"  time ratios to --skip-free: whole device {times['disksafe backup'] / base:.2f}, "
          f"partclone {times['partclone.ext4 | zstd -1'] / base:.2f}")
    restored = img + ".restored"
    sh(f"{DS} restore {skip} 1 disk {restored}")
    ok = subprocess.run(["e2fsck", "-fn", restored], capture_output=True).returncode == 0
    print(f"  the --skip-free point restored passes e2fsck -fn: {ok}")
    for p in (img, restored, pc):
        os.remove(p)


if __name__ == "__main__":
    sh(f"cd {ROOT} && cargo build --release --bins --examples -q")
    {"safe": bench_safe, "mount": bench_mount, "ext": bench_ext, "xfs": bench_xfs, "btrfs": bench_btrfs, "ntfs": bench_ntfs, "blocksize": bench_blocksize,
     "coldseq": bench_coldseq, "forget": bench_forget, "skipfree": bench_skipfree}[sys.argv[1]]()
