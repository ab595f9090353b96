#!/bin/bash
# PID 1 of a test sandbox: build a root file system, then become systemd.
#
#   sandbox_init.sh WORKDIR [HOST_PATH:INNER_PATH:ro|rw]...
#
# sandbox.py starts this under `unshare` in new pid, mount, uts, ipc, net and cgroup
# namespaces. The new root is a copy-on-write overlay of the host's /, whose upper
# layer is a tmpfs under WORKDIR: everything the sandbox writes (users, units,
# /etc/absurd) vanishes with it and the host's files never change. Each bind shows a
# host folder at INNER_PATH (the repository, the test database's socket folder).
set -euo pipefail

workdir=$1
shift
layers=$workdir/layers
root=$workdir/root

mount --make-rprivate /
mkdir -p "$layers" "$root"
mount -t tmpfs -o mode=0755 absurd-sandbox "$layers"
mkdir -p "$layers/upper" "$layers/work"
mount -t overlay overlay \
    -o "lowerdir=/,upperdir=$layers/upper,workdir=$layers/work" "$root"

# Kernel interfaces: this pid namespace's /proc, with the host's sysctls read-only.
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
for knob in sys sysrq-trigger; do
    [ -e "$root/proc/$knob" ] || continue
    mount --bind "$root/proc/$knob" "$root/proc/$knob"
    mount -o remount,bind,ro "$root/proc/$knob"
done
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$root/sys/fs/cgroup"

# A minimal /dev: a handful of harmless character devices, no disks.
mount -t tmpfs -o mode=0755,nosuid dev "$root/dev"
for device in null zero full random urandom tty; do
    touch "$root/dev/$device"
    mount --bind "/dev/$device" "$root/dev/$device"
done
mkdir -p "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o mode=0755,nosuid,nodev run "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$root/tmp"

for bind in "$@"; do
    IFS=: read -r host_path inner_path mode <<<"$bind"
    mkdir -p "$root$inner_path"
    mount --bind "$host_path" "$root$inner_path"
    if [ "$mode" = ro ]; then
        mount -o remount,bind,ro "$root$inner_path"
    fi
done

# Units that have nothing to do in a sandbox, or would touch the host's kernel.
units=$root/etc/systemd/system
for unit in systemd-timesyncd.service systemd-pstore.service \
    systemd-modules-load.service systemd-sysctl.service systemd-binfmt.service \
    proc-sys-fs-binfmt_misc.automount systemd-random-seed.service \
    systemd-firstboot.service systemd-repart.service systemd-remount-fs.service \
    kmod-static-nodes.service sys-kernel-debug.mount sys-kernel-tracing.mount \
    sys-kernel-config.mount sys-fs-fuse-connections.mount dev-hugepages.mount \
    systemd-pcrphase.service systemd-pcrphase-sysinit.service systemd-udevd.service \
    systemd-udev-trigger.service getty.target console-getty.service \
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
    fstrim.timer man-db.timer systemd-tmpfiles-clean.timer; do
    ln -sf /dev/null "$units/$unit"
done
# Boot to basic.target plus whatever a test starts, not to the host's default.
cat >"$units/absurd-sandbox.target" <<'EOF'
[Unit]
Description=absurd test sandbox
Requires=basic.target
After=basic.target
EOF

cd "$root"
mkdir -p .old-root
pivot_root . .old-root
umount -l /.old-root
rmdir /.old-root
cd /
exec env -i container=absurd-sandbox \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --system --unit=absurd-sandbox.target --show-status=no
