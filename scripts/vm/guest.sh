#!/bin/sh
# Runs inside the test guest (see run.sh): the tests that depend on the kernel, the cgroup
# version, the driver or systemd (tests.sh picks them per leg), from a build made on the
# host, against the guest's pure cgroup v2.
# Usage: guest.sh DRIVER CHECKOUT OUT [FILTER]   (FILTER: a nextest expression to narrow to)
#   DRIVER   cgroupfs (virtme-ng's own init) or systemd (systemd is PID 1; we are a unit)
#   CHECKOUT the host checkout (read-only in the guest)
#   OUT      a directory shared read-write with the host: the log and exit code go there
set -u
driver=$1 checkout=$2 out=$3 only=${4:-all()}
# COVE_VM_KEEP on the host: passing tests keep their containerd logs too (finish copies
# them home).
[ -f "$out/keep" ] && export COVE_TEST_KEEP_LOGS=1

# The guest's root is the host's, read-only. The tests write to /tmp (containerd's root
# and state: overlayfs needs a real upper filesystem, not an overlay of 9p): an ext4
# filesystem in a sparse file on a tmpfs, gone with the guest (discard gives freed blocks
# back). Not tmpfs itself: the guest's Linux 6.1 cannot idmap tmpfs (6.3 can), which a
# user-namespaced pod's layers and pod files need.
mount -t tmpfs -o mode=0700 tmpfs /mnt || exit 1
truncate -s 5G /mnt/tmp.ext4 && mkfs.ext4 -q -F /mnt/tmp.ext4 || exit 1
modprobe loop && dev=$(losetup -f --show /mnt/tmp.ext4) || exit 1
mount -t ext4 -o discard "$dev" /tmp || exit 1
chmod 1777 /tmp
if [ "$driver" = systemd ]; then
    # virtme-ng's init overlays /var and mounts the shared directory in the other leg;
    # under systemd we do (the CNI plugins cache results in /var/lib/cni).
    mkdir -p /tmp/.var/upper /tmp/.var/work
    mount -t overlay -o lowerdir=/var,upperdir=/tmp/.var/upper,workdir=/tmp/.var/work overlay /var || exit 1
    mount -t 9p -o trans=virtio,version=9p2000.L,access=any,msize=524288 virtme.initmount0 "$out" || exit 1
fi
finish() {
    # What a failed test kept (containerd's log, the shims' logs within it) goes home.
    for l in /tmp/cove-e2e-*/containerd.log; do
        [ -f "$l" ] && mkdir -p "$out/kept" && cp "$l" "$out/kept/$(basename "$(dirname "$l")").log"
    done
    echo "$1" > "$out/rc"
    sync
    if [ "$driver" = systemd ]; then echo o > /proc/sysrq-trigger; fi
    exit "$1"
}
# No udev: for every veth a pod's or container's network adds, udevd runs systemd-sysctl
# and modprobe (measured with process accounting: about 5 % of the Docker tests' CPU in
# the systemd leg), and nothing the tests check needs it.
if [ "$driver" = systemd ]; then
    systemctl stop systemd-udevd-kernel.socket systemd-udevd-control.socket systemd-udevd.service
else
    udevadm control --exit
fi
echo "guest: $(uname -r), pid 1 is $(cat /proc/1/comm), cgroup $(stat -fc %T /sys/fs/cgroup)"
echo "guest: controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "guest: clock source: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
    echo "guest: /sys/fs/cgroup is not a pure cgroup v2 mount"; finish 3
fi
mkdir -p /run/netns /tmp/home
export HOME=/tmp/home PATH=/usr/local/bin:/root/.cargo/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The runc the host's containerd pins, when run.sh found one (scripts/runc.sh); with
# COVE_VM_CONTAINERD, that containerd build and the runc it pins.
[ -x "$out/runc/runc" ] && export PATH="$out/runc:$PATH"
echo "guest: $(runc --version | head -1) ($(command -v runc))"
echo "guest: $(containerd --version) ($(command -v containerd))"
# The shim binary run.sh was given (make's static one), else the tests' own build.
bin=$(cat "$out/cove-bin" 2>/dev/null || true)
[ -n "$bin" ] && export COVE_BIN="$bin"
echo "guest: shim ${COVE_BIN:-built by cargo for the tests}"
export COVE_TEST_CGROUP_DRIVER="$driver"
# The harness's seeded containerd roots (the test images, imported once per leg) go where
# the guest can write, not into the read-only checkout's target/.
export COVE_E2E_SEEDS=/tmp/cove-seeds
# Under emulation the restart test runs with 2 pods per handler (20 on the host): what
# the guest adds is a restart on cgroup v2 and under systemd, which two pods show as well as
# twenty; the host run covers the numbers (5 took about 4 minutes per leg here).
export COVE_TEST_RESTART_PODS=2
cd "$checkout" || finish 4
{
    cargo-nextest nextest run --profile vm --no-fail-fast --run-ignored all \
        --binaries-metadata "$out/binaries.json" --cargo-metadata "$out/cargo-metadata.json" \
        --workspace-remap "$checkout" \
        -E "($("$checkout/scripts/test-filter.sh")) & ($("$checkout/scripts/vm/tests.sh" "$driver")) & ($only)" 2>&1
    echo $? > /tmp/nextest.rc
} | tee "$out/log"
finish "$(cat /tmp/nextest.rc 2>/dev/null || echo 5)"
