#!/bin/sh
# `make test-vm`: the root integration suites in a guest kernel with pure cgroup v2, under
# QEMU (TCG: KVM guests hang on our machines) through virtme-ng, on the host's own root,
# read-only. Two legs: `cgroupfs` (virtme-ng's init; cove and runc use cgroupfs) and
# `systemd` (systemd is PID 1 and both use the systemd cgroup driver).
# Builds on the host; the guest writes only to tmpfs and to one directory under /var/tmp.
# Usage: run.sh [LEG...]; COVE_VM_TESTS=<filter> runs only the tests nextest's -E selects;
# COVE_VM_CONTAINERD=<version> runs them against that containerd build from CONTAINERD_DIR
# (default ../shared/containerd) and the runc it pins, instead of the host's containerd.
# COVE_VM_KEEP=1 keeps every test's containerd log (passing tests too) and the guests'
# directory, to read what a test that passed did.
set -eu
cd "$(dirname "$0")/../.."
checkout=$(pwd)
legs=${*:-cgroupfs systemd}
kernel=$(ls -v /boot/vmlinuz-* 2>/dev/null | tail -1)
[ -n "$kernel" ] || { echo "test-vm: no guest kernel in /boot (make deps DEPS=vm installs one; make test-vm does)" >&2; exit 1; }
command -v vng >/dev/null || { echo "test-vm: virtme-ng is not installed (make deps DEPS=vm)" >&2; exit 1; }
command -v cargo-nextest >/dev/null || { echo "test-vm: cargo-nextest is required" >&2; exit 1; }

work=/var/tmp/cove-vm.$$
mkdir -p "$work"
echo "test-vm: building the tests on the host"
cargo nextest list --list-type binaries-only --message-format json > "$work/binaries.json"
scripts/vm/tests.sh --check
cargo metadata --format-version 1 --no-deps > "$work/cargo-metadata.json"

units=${HOME:-/root}/.cache/virtme-ng
failed=""
for leg in $legs; do
    out="$work/$leg"
    mkdir -p "$out"
    [ "${COVE_VM_KEEP:-}" = 1 ] && : > "$out/keep"
    guest="$checkout/scripts/vm/guest.sh $leg $checkout $out${COVE_VM_TESTS:+ '$COVE_VM_TESTS'}"
    cp "$work/binaries.json" "$work/cargo-metadata.json" "$out/"
    # The runc the host's containerd pins (the guest runs the host's containerd), copied
    # where the guest sees it (virtme-ng hides the host's /var/tmp): the guest puts that
    # directory first on its PATH.
    # The shim binary under test (`make test-vm` sets COVE_BIN to the static one): the
    # checkout is visible in the guest at the same path.
    printf '%s\n' "${COVE_BIN:-}" > "$out/cove-bin"
    # With COVE_VM_CONTAINERD, that containerd's binaries go there too.
    if [ -n "${COVE_VM_CONTAINERD:-}" ]; then
        bindir=$("${CONTAINERD_DIR:-../shared/containerd}/install.sh" "$COVE_VM_CONTAINERD" /var/tmp/cove-matrix)
        mkdir -p "$out/runc"
        for b in containerd ctr containerd-shim-runc-v2; do cp "$bindir/$b" "$out/runc/$b"; done
        runc_dir=$(scripts/runc.sh "$COVE_VM_CONTAINERD")
    else
        runc_dir=$(scripts/runc.sh)
    fi
    if [ -n "$runc_dir" ]; then
        mkdir -p "$out/runc" && cp "$runc_dir/runc" "$out/runc/runc"
    fi
    # The guest is a throwaway test machine under emulation: no speculative-execution
    # mitigations (what they guard, one guest process against another, no test looks at),
    # and the TSC as its clock (virtme-ng's guest otherwise reads the emulated HPET, a device
    # access per clock read; the Go daemons read the clock constantly). The guest's clock was
    # checked against the host's over a leg: it does not drift.
    # QEMU's baseline CPU model, not virtme-ng's `max`: with `max`'s ERMS the guest's kernel
    # and libc copy and clear memory with `rep movsb`, which TCG emulates a step at a time,
    # and its other features (not bisected further) cost about as much again. Measured on
    # task_cri's pod test alone in the cgroupfs leg: 146 s with `max`, 123 s with `max`
    # less ERMS, 105 s with qemu64. Nothing the legs test depends on the CPU's features.
    set -- --run "$kernel" --disable-kvm --cpus 2 --memory 6G --user root --rwdir="$out" \
        --qemu-opts="-cpu qemu64" \
        --append cgroup_no_v1=all --append systemd.unified_cgroup_hierarchy=1 \
        --append mitigations=off --append tsc=reliable --append clocksource=tsc
    case $leg in
    cgroupfs)
        set -- "$@" --exec "$guest" ;;
    systemd)
        # systemd as PID 1 on a read-only root. virtme-ng adds $units to systemd's unit
        # path; our target starts only D-Bus and the test unit. `container=` tells systemd
        # that it is not in a container (the host root has /.dockerenv), so it reads the
        # kernel command line.
        mkdir -p "$units"
        printf '[Unit]\nDescription=cove tests\nAllowIsolate=yes\nWants=cove-vm-test.service\n' > "$units/cove-vm.target"
        printf '[Unit]\nDefaultDependencies=no\nWants=dbus.socket\nAfter=dbus.socket\n[Service]\nType=oneshot\nExecStart=%s\nStandardOutput=tty\nStandardError=tty\nTTYPath=/dev/ttyS0\n' \
            "$guest" > "$units/cove-vm-test.service"
        set -- "$@" --systemd --append container= --append systemd.unit=cove-vm.target \
            --append systemd.show_status=0 ;;
    *) echo "test-vm: unknown leg $leg" >&2; exit 2 ;;
    esac
    echo "test-vm: leg $leg: booting $(basename "$kernel") under QEMU (TCG)"
    start=$(date +%s)
    # Through a pipe: QEMU reopens /proc/self/fd/1, which would truncate a log file.
    # A leg is ended after COVE_VM_TIMEOUT seconds: the systemd leg, Docker suite included,
    # took 2152 s once (on a host that was building at the same time), the cgroupfs leg
    # 1020 s.
    timeout --kill-after=30 "${COVE_VM_TIMEOUT:-3000}" vng "$@" < /dev/null 2>&1 | cat
    rc=$(cat "$out/rc" 2>/dev/null || echo "none")
    [ "$leg" = systemd ] && rm -f "$units/cove-vm.target" "$units/cove-vm-test.service"
    summary=$(grep -a 'Summary \[' "$out/log" 2>/dev/null | tail -1 || true)
    echo "test-vm: leg $leg: $(( $(date +%s) - start )) s, exit $rc: ${summary:-no test summary (the guest did not run the suite)}"
    [ "$rc" = 0 ] || failed="$failed $leg"
done
if [ -n "$failed" ]; then
    echo "test-vm: FAILED:$failed (guest logs kept in $work)" >&2
    exit 1
fi
if [ "${COVE_VM_KEEP:-}" = 1 ]; then
    echo "test-vm: guest logs kept in $work (COVE_VM_KEEP)"
else
    rm -rf "$work"
fi
echo "test-vm: every leg passed: $legs"
