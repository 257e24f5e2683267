#!/bin/sh
# Prints the directory of the runc that containerd VERSION pins (its script/setup/runc-version),
# unpacked from the static builds in RUNC_DIR (default ../shared/runc) into /var/tmp/cove-runc.
# Put it first on PATH: containerd's runc shim, CRI and cove then all run that runc.
# Prints nothing (and says why on stderr) when those builds are not there: the runc on PATH
# is used then.
#
# Usage: runc.sh [VERSION]   (default: the containerd on PATH)
set -eu
cd "$(dirname "$0")/.."
v=${1:-$(containerd --version | awk '{print $3}')}
v=${v#v}
case $v in
2.1.* | 2.2.*) pinned=1.3.6 ;;
2.3.*) pinned=1.4.3 ;;
2.4.*) pinned=1.5.1 ;;
*) echo "runc.sh: no runc pinned for containerd $v here; using the runc on PATH" >&2; exit 0 ;;
esac
dir=${RUNC_DIR:-../shared/runc}
if [ ! -x "$dir/install.sh" ]; then
    echo "runc.sh: no runc builds at $dir (set RUNC_DIR); using the runc on PATH" >&2
    exit 0
fi
"$dir/install.sh" "$pinned" /var/tmp/cove-runc
