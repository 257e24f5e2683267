#!/bin/sh
# `make test-matrix`: the CRI end-to-end, task, escape, user-namespace and exec-drain suites
# against each containerd version, one private containerd at a time, each with the runc it
# pins (scripts/runc.sh, from RUNC_DIR), and that version's runc pod path as the oracle:
# Debian's containerd (2.1.x) and every version given, unpacked from CONTAINERD_DIR
# (archives containerd-<version>-linux-amd64.tar.xz with containerd, ctr and
# containerd-shim-runc-v2, and an install.sh; see ../shared/containerd/README.md).
# Prints a pass/fail table. A version whose binaries are missing fails the run.
#
# Usage: matrix.sh CONTAINERD_DIR [VERSION...]   (default versions: 2.2.7 2.3.4 2.4.0-beta.0)
set -eu
cd "$(dirname "$0")/.."
dir=${1:?usage: matrix.sh CONTAINERD_DIR [VERSION...]}
shift
versions=${*:-2.2.7 2.3.4 2.4.0-beta.0}
filter='binary(cri_e2e) | binary(task_cri) | binary(task_ctr) | binary(cri_compat) | binary(cri_restart) | binary(escape) | binary(userns) | binary(exec_drain)'

[ -d "$dir" ] || { echo "test-matrix: no directory $dir (set CONTAINERD_DIR)" >&2; exit 1; }
[ -x "$dir/install.sh" ] || { echo "test-matrix: $dir has no install.sh" >&2; exit 1; }
unpack=/var/tmp/cove-matrix
mkdir -p "$unpack"

echo "test-matrix: building the tests; shim: ${COVE_BIN:-built by cargo for the tests}"
cargo nextest run --no-run

results=""
failed=0
run() { # LABEL BINDIR
    label=$1 bindir=$2
    for b in containerd ctr containerd-shim-runc-v2; do
        [ -x "$bindir/$b" ] || { echo "test-matrix: $label: $bindir/$b is missing" >&2; exit 1; }
    done
    got=$("$bindir/containerd" --version | awk '{print $3}')
    runc_dir=$(scripts/runc.sh "$got")
    path="${runc_dir:+$runc_dir:}$bindir:$PATH"
    runc=$(PATH="$path" runc --version | head -1 | awk '{print $3}')
    echo "test-matrix: containerd $got ($bindir), runc $runc ($(PATH="$path" command -v runc))"
    log=$unpack/$label.log
    start=$(date +%s)
    gates=$(PATH="$path" scripts/test-filter.sh)
    if PATH="$path" cargo nextest run --no-fail-fast -E "($filter) & ($gates)" > "$log" 2>&1; then
        verdict=pass
    else
        verdict=FAIL
        failed=1
    fi
    summary=$(grep -a 'Summary \[' "$log" | tail -1 | sed 's/.*Summary \[ *\([0-9.]*s\)\] /\1, /')
    echo "test-matrix: containerd $got: $verdict ($summary)"
    [ "$verdict" = pass ] || grep -a -E '^ +FAIL \[' "$log" | sort -u >&2 || true
    results="$results$(printf '| %s | %s | %s | %s | %ss |' "$got" "$runc" "$verdict" "$summary" "$(( $(date +%s) - start ))")
"
}

run debian "$(dirname "$(command -v containerd)")"
for v in $versions; do
    bindir=$("$dir/install.sh" "$v" "$unpack") || { echo "test-matrix: containerd $v is missing from $dir" >&2; exit 1; }
    run "$v" "$bindir"
done

echo
echo "| containerd | runc | result | tests | wall |"
echo "|---|---|---|---|---|"
printf '%s' "$results"
[ "$failed" = 0 ] || { echo "test-matrix: FAILED (logs in $unpack)" >&2; exit 1; }
