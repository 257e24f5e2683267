#!/bin/sh
# Builds the OCI image archives the tests import (no registry is reachable), each also
# carrying the manifest.json of `docker save`, so that Docker loads the same archive:
#   busybox.tar  cove.test/busybox:latest  (Debian's busybox-static, and
#                tests/images/probe.c as /bin/cove-probe, static)
#   pause.tar    cove.test/pause:latest    (tests/images/pause.c, static)
# Usage: build.sh OUTDIR. Idempotent: archives newer than their inputs are kept.
set -eu
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
arch=$(dpkg --print-architecture)
mkdir -p "$out"

blob() { # FILE -> moves it into blobs/sha256/<digest>, prints the digest
    d=$(sha256sum "$1" | cut -d' ' -f1)
    mv "$1" "$work/layout/blobs/sha256/$d"
    echo "$d"
}

image() { # NAME ROOTFS ENTRYPOINT_JSON OUT
    name=$1 rootfs=$2 entry=$3 dest=$4
    work=$(mktemp -d)
    mkdir -p "$work/layout/blobs/sha256"
    tar --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
    layer=$(blob "$work/layer.tar")
    lsize=$(stat -c %s "$work/layout/blobs/sha256/$layer")
    printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":%s,"Env":["PATH=/bin:/sbin:/usr/bin:/usr/sbin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$arch" "$entry" "$layer" > "$work/config.json"
    config=$(blob "$work/config.json")
    csize=$(stat -c %s "$work/layout/blobs/sha256/$config")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
        "$config" "$csize" "$layer" "$lsize" > "$work/manifest.json"
    manifest=$(blob "$work/manifest.json")
    msize=$(stat -c %s "$work/layout/blobs/sha256/$manifest")
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"latest"}}]}' \
        "$manifest" "$msize" "$arch" "$name" > "$work/layout/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
    # The same image as `docker save` writes it, for Docker's own image store (it reads
    # manifest.json; containerd's import reads index.json).
    printf '[{"Config":"blobs/sha256/%s","RepoTags":["%s"],"Layers":["blobs/sha256/%s"]}]' \
        "$config" "$name" "$layer" > "$work/layout/manifest.json"
    tar -C "$work/layout" -cf "$dest.tmp" . && mv "$dest.tmp" "$dest"
    rm -rf "$work"
}

if [ ! -f "$out/busybox.tar" ] || [ /bin/busybox -nt "$out/busybox.tar" ] || [ "$0" -nt "$out/busybox.tar" ] || [ "$here/probe.c" -nt "$out/busybox.tar" ]; then
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/root"
    cp /bin/busybox "$root/bin/busybox"
    gcc -static -O2 -Wall -Werror -o "$root/bin/cove-probe" "$here/probe.c"
    strip "$root/bin/cove-probe"
    for app in $(/bin/busybox --list); do
        [ "$app" = busybox ] || ln -sf busybox "$root/bin/$app"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
    echo 'root:x:0:' > "$root/etc/group"
    image cove.test/busybox:latest "$root" '["/bin/sh"]' "$out/busybox.tar"
    rm -rf "$root"
fi

if [ ! -f "$out/pause.tar" ] || [ "$here/pause.c" -nt "$out/pause.tar" ] || [ "$0" -nt "$out/pause.tar" ]; then
    root=$(mktemp -d)
    gcc -static -Os -o "$root/pause" "$here/pause.c"
    strip "$root/pause"
    image cove.test/pause:latest "$root" '["/pause"]' "$out/pause.tar"
    rm -rf "$root"
fi
