#!/usr/bin/env bash
# PostgreSQL 15 under pgbench on a btrfs or XFS volume; three reflink snapshots of the
# running volume's image (what a hypervisor snapshot or a power cut leaves) backed up
# as three points. For each point: its tree against the kernel's own recovery of the
# same snapshot (contents with diff -r, then mode/links/owner/size/mtime/ctime of every
# path), and the data directory copied out of the mount started by PostgreSQL (crash
# recovery), its sums checked (pgbench keeps accounts = tellers = branches) and its
# page checksums verified; then the same copy from a --no-replay mount, to show what
# the replay adds. Needs root, postgresql-15, xfsprogs (the host volume holding the
# images, for reflinks) and the filesystem's tools. Usage: bench/pg-snapshots.sh btrfs|xfs
set -euo pipefail
fs=${1:?btrfs or xfs}
W=/var/tmp/disksafe-pg-$fs
PG=/usr/lib/postgresql/15/bin
DS=$(cd "$(dirname "$0")/.." && pwd)/target/release/disksafe
mkdir -p $W && cd $W
for d in m k bt host; do umount -q $W/$d 2>/dev/null || true; done
rm -rf safe host.img mount.log mount-nr.log && mkdir -p host bt m k
truncate -s 20G host.img && mkfs.xfs -q -f host.img && mount -o loop host.img host
truncate -s 4G host/vol.img
case $fs in
  btrfs) mkfs.btrfs -q -f host/vol.img > /dev/null 2>&1 ;;
  xfs) mkfs.xfs -q -f host/vol.img ;;
esac
mount -o loop host/vol.img bt
mkdir bt/pgdata && chown postgres bt/pgdata
as_pg() { su postgres -c "$*"; }
as_pg "$PG/initdb --data-checksums -D $W/bt/pgdata" > /dev/null 2>&1
as_pg "$PG/pg_ctl -D $W/bt/pgdata -o '-p 5499 -k /tmp' -l /tmp/pg-live.log start -w" > /dev/null
as_pg "$PG/pgbench -h /tmp -p 5499 -i -s 20 postgres" > /dev/null 2>&1
as_pg "$PG/pgbench -h /tmp -p 5499 -c 4 -T 50 postgres" > bench.out 2>&1 &
for n in 1 2 3; do
  sleep 12
  cp --reflink=always host/vol.img host/snap$n.img
done
wait
grep -h '^tps' bench.out
as_pg "$PG/pg_ctl -D $W/bt/pgdata stop -m fast" > /dev/null
umount bt
for n in 1 2 3; do "$DS" backup safe vol=host/snap$n.img > /dev/null 2>&1; done
q() { as_pg "$PG/psql -h /tmp -p 5498 -At -c \"$1\" postgres"; }
recover() { # $1: data directory in a mount; prints what PostgreSQL recovered
  rm -rf /tmp/pg-restore && cp -a "$1" /tmp/pg-restore && chown -R postgres /tmp/pg-restore
  rm -f /tmp/pg-restore/postmaster.pid
  as_pg "$PG/pg_ctl -D /tmp/pg-restore -o '-p 5498 -k /tmp' -l /tmp/pg-restore.log start -w" > /dev/null
  echo "accounts $(q 'select sum(abalance) from pgbench_accounts')" \
    "tellers $(q 'select sum(tbalance) from pgbench_tellers')" \
    "branches $(q 'select sum(bbalance) from pgbench_branches')" \
    "history $(q 'select count(*) from pgbench_history')"
  as_pg "$PG/pg_ctl -D /tmp/pg-restore stop -m fast" > /dev/null
  as_pg "$PG/pg_checksums --check -D /tmp/pg-restore" | grep -i 'bad checksums' | tr -s ' '
}
"$DS" mount safe m --log $W/mount.log > /dev/null
for n in 1 2 3; do
  cp --reflink=always host/snap$n.img host/kernel$n.img
  mount -o loop,noatime host/kernel$n.img k # the kernel's recovery
  ours=m/$n/vol/files
  if diff -r --no-dereference k $ours > diff.$n 2>&1; then c=identical; else c="$(wc -l < diff.$n) lines differ"; fi
  f='%P %m %n %U %G %s %T@ %C@\n'
  if diff <(cd k && find . -printf "$f" | sort) <(cd $ours && find . -printf "$f" | sort) > meta.$n; then
    mm="identical ($(cd k && find . | wc -l) paths)"
  else mm="$(wc -l < meta.$n) lines differ"; fi
  umount k
  echo "point $n: contents $c; metadata $mm"
  echo "point $n: recovered: $(recover $ours/pgdata | tr '\n' ' ')"
done
grep -E 'replayed|replay' mount.log | sed 's/.*\(point\)/\1/' || true
"$DS" umount m
"$DS" mount safe m --no-replay --log $W/mount-nr.log > /dev/null
# Without replay an XFS point is a half-written volume (files may not even copy);
# a btrfs point is its last commit.
for n in 1 2 3; do
  echo "point $n without replay: $( (recover m/$n/vol/files/pgdata 2> /dev/null || echo 'PostgreSQL did not start') | tr '\n' ' ')"
done
"$DS" umount m
umount host
