#!/bin/sh
# Prints the nextest filter expression for the containerd and runc on PATH. A test whose
# name ends in `_since_X_Y_Z` needs containerd X.Y.Z or newer (older ones crash or lack the
# API): it is left out on older ones, and nextest reports it as skipped. The user-namespace
# suite (tests/userns.rs) needs a runc with idmapped mounts (1.2+): it is left out, said
# here, and reported as skipped where the runc on PATH has none.
set -eu
v=$(containerd --version | awk '{print $3}' | sed 's/^v//; s/[^0-9.].*//')
older() { # A B: A < B as versions
    [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" = "$1" ]
}
filter='all()'
for gate in 2.2.7 2.3.0; do
    if older "$v" "$gate"; then
        filter="$filter & not test(/_since_$(echo "$gate" | tr . _)\$/)"
    fi
done
if ! runc features 2>/dev/null | tr -d ' \n\t' | grep -q '"idmap":{"enabled":true'; then
    echo "test-filter: $(runc --version 2>/dev/null | head -1 || echo 'no runc') has no idmapped mounts: the user-namespaced pod tests (binary userns) are skipped" >&2
    filter="$filter & not binary(userns)"
fi
# Checkpoint and restore need CRIU, which runs only where `criu check` passes.
if ! why=$(criu check 2>&1); then
    echo "test-filter: CRIU cannot run here ($(printf '%s\n' "$why" | grep -m1 -i error || echo 'no criu')): the checkpoint tests (binary checkpoint) are skipped" >&2
    filter="$filter & not binary(checkpoint)"
fi
echo "$filter"
