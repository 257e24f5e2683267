#!/bin/sh
# Installs what cove's build, tests and demo need, idempotently (run as root):
# containerd 2.x from Debian unstable (the stable release has none), runc, the CNI
# plugins, busybox-static, util-linux (nsenter), iproute2, protobuf-compiler (for the
# test clients' generated code), gcc and libc6-dev (for the static test pause binary).
set -eu
[ "$(id -u)" = 0 ] || { echo "deps: run as root" >&2; exit 1; }

need=""
for pkg in runc containernetworking-plugins busybox-static util-linux iproute2 protobuf-compiler gcc libc6-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi

if ! containerd --version 2>/dev/null | grep -q ' v\?2\.'; then
    # containerd 2.x is only in unstable: derive a private apt source from this machine's
    # own Debian entry (same mirror, suite sid), download just that package, install it
    # with dpkg. Nothing is added to the system's apt sources.
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
    set -- -o Dir::Etc::SourceList="$dir/sid.sources" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache"
    apt-get "$@" update -qq
    (cd "$dir" && rm -f containerd_*.deb && apt-get "$@" download containerd 2>/dev/null)
    dpkg -i "$dir"/containerd_*.deb >/dev/null
fi
echo "deps: $(containerd --version | cut -d' ' -f1,3), $(runc --version | head -1)"
