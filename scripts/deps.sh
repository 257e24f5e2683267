#!/bin/sh
# Installs what cove's build, tests and demo need, idempotently (run as root):
# containerd 2.x from Debian unstable (the stable release has none), runc, the CNI
# plugins, busybox-static, util-linux (nsenter), iproute2, protobuf-compiler (for the
# test clients' generated code), gcc and libc6-dev (for the static test pause binary),
# CRIU and docker-registry (the distribution registry, run on loopback by the test of
# CRI's restore, which pulls the checkpoint's base image; its own service is disabled),
# and Docker for the Docker suite: docker.io and docker-cli 28.x with tini-static from
# Debian unstable (a `runtimeType` runtime in daemon.json needs Docker 23 or newer; the
# stable release has 20.10), iptables from stable. The package's own daemon is not
# started (no init here runs it; the tests start a private dockerd).
#
# Usage: deps.sh [vm]
#   vm   also what `make test-vm` boots: QEMU, Debian's kernel (its modules serve the
#        guest; no initramfs is generated, virtme-ng makes its own) and virtme-ng
#        (from Debian unstable), with the tools virtme-ng runs in the guest.
set -eu
[ "$(id -u)" = 0 ] || { echo "deps: run as root" >&2; exit 1; }

want="runc containernetworking-plugins busybox-static util-linux iproute2 protobuf-compiler gcc libc6-dev iptables criu docker-registry"
for extra in "$@"; do
    case $extra in
    vm) want="$want qemu-system-x86 linux-image-amd64 python3-argcomplete python3-requests util-linux-extra kbd file dbus systemd" ;;
    *) echo "deps: unknown component $extra" >&2; exit 2 ;;
    esac
done

need=""
for pkg in $want; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
    apt-get update -qq
    # INITRD=No: the guest boots from virtme-ng's own initramfs.
    INITRD=No DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
# The registry package enables a service on :5000; the systemd guest of `make test-vm`
# boots this root and would start it. Tests run their own on a free loopback port.
rm -f /etc/systemd/system/multi-user.target.wants/docker-registry.service

# Packages only Debian unstable has: a private apt source derived from this machine's own
# Debian entry (same mirror, suite sid); the package alone is downloaded and installed
# with dpkg. Nothing is added to the system's apt sources.
from_unstable() { # PACKAGE...
    dir=/var/cache/cove-deps
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
    uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || { echo "deps: no Debian apt source found to derive unstable from" >&2; exit 1; }
    printf 'Types: deb\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" > "$dir/sid.sources"
    pkgs=$*
    set -- -o Dir::Etc::SourceList="$dir/sid.sources" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache"
    apt-get "$@" update -qq
    debs=""
    for pkg in $pkgs; do
        (cd "$dir" && rm -f "${pkg}"_*.deb && apt-get "$@" download "$pkg" 2>/dev/null)
        debs="$debs $(ls "$dir/${pkg}"_*.deb)"
    done
    # shellcheck disable=SC2086 # one argument per package file
    dpkg -i $debs >/dev/null
}

if ! containerd --version 2>/dev/null | grep -q ' v\?2\.'; then
    from_unstable containerd
fi
# Docker 23 or newer, by its absolute path (a `docker` elsewhere on PATH may be another build).
docker_major=$(/usr/sbin/dockerd --version 2>/dev/null | awk '{ split($3, v, "."); print v[1] + 0 }')
if [ "${docker_major:-0}" -lt 23 ] || [ ! -x /usr/bin/docker ]; then
    from_unstable tini-static docker-cli docker.io
fi
for extra in "$@"; do
    case $extra in
    vm)
        command -v vng >/dev/null || from_unstable virtme-ng
        ls /boot/vmlinuz-* >/dev/null 2>&1 || { echo "deps: no kernel in /boot for the guest" >&2; exit 1; }
        ;;
    esac
done
echo "deps: $(containerd --version | cut -d' ' -f1,3), $(runc --version | head -1), $(/usr/sbin/dockerd --version)"
