#!/bin/sh
# `make release`, after `make build`: prints the binary's sha256 and writes
# target/release/cove-VERSION-linux-ARCH.tar.gz with the binary, the README, the LICENSE
# and an example containerd config. The archive is reproducible for a commit: sorted
# names, root-owned, every mtime the commit's time.
# Usage: release.sh BINARY VERSION
set -eu
cd "$(dirname "$0")/.."
bin=${1:?usage: release.sh BINARY VERSION} version=${2:?usage: release.sh BINARY VERSION}
[ -x "$bin" ] || { echo "release: $bin is missing (make build)" >&2; exit 1; }
case $(uname -m) in
x86_64) arch=amd64 ;;
aarch64) arch=arm64 ;;
*) arch=$(uname -m) ;;
esac
# A release binary is static: it must run where there is no C library at all.
if readelf -l "$bin" | grep -q 'program interpreter'; then
    echo "release: $bin is dynamically linked" >&2; exit 1
fi
name=cove-$version-linux-$arch
stage=target/release/$name
rm -rf "$stage" && mkdir -p "$stage"
install -m 0755 "$bin" "$stage/containerd-shim-cove-v1"
install -m 0644 README.md LICENSE "$stage/"
install -m 0644 docs/containerd-config.toml "$stage/containerd-config.toml"
when=$(git log -1 --format=%ct 2>/dev/null || date +%s)
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$when" \
    -C target/release -cf - "$name" | gzip -n > "target/release/$name.tar.gz"
rm -rf "$stage"
"$bin" -v
echo "release: sha256 $(sha256sum "$bin" | cut -d' ' -f1)  containerd-shim-cove-v1"
echo "release: sha256 $(sha256sum "target/release/$name.tar.gz" | cut -d' ' -f1)  target/release/$name.tar.gz"
