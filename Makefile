# The commands a person types. Everything that needs the host (tests, demo) runs as root.
CARGO ?= cargo
# The shim is built static (glibc's crt-static, not position-independent: nothing to
# relocate at start, so its pages are shared by every shim and pause process) for the
# host's target; `make test`, the matrix, the VM legs and the demo all run this binary.
TARGET  := $(shell rustc -vV | sed -n 's/^host: //p')
BIN     := target/$(TARGET)/release/containerd-shim-cove-v1
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
STATIC  := -C target-feature=+crt-static -C relocation-model=static
export COVE_BIN := $(abspath $(BIN))

.PHONY: all build release deps images test test-vm test-matrix bench lint demo install clean

# Where test-matrix finds containerd builds (containerd-<version>-linux-amd64.tar.xz and
# install.sh), and which versions it runs besides Debian's.
CONTAINERD_DIR  ?= ../shared/containerd
MATRIX_VERSIONS ?= 2.2.7 2.3.4 2.4.0-beta.0

all: build

## build: the static shim binary, target/<host target>/release/containerd-shim-cove-v1
## (-v says the commit it was built from, `git describe --dirty`)
build:
	COVE_REVISION=$$(git describe --always --dirty 2>/dev/null) RUSTFLAGS="$(STATIC)" \
		$(CARGO) build --release --locked --target $(TARGET) --bin containerd-shim-cove-v1

## release: build, then print the binary's sha256 and write
## target/release/cove-<version>-linux-<arch>.tar.gz (the binary, README, LICENSE and a
## containerd config snippet)
release: build
	scripts/release.sh $(BIN) $(VERSION)

## deps: install containerd 2.x and Docker 28 (from Debian unstable), runc, CNI plugins, busybox-static, ...
## (DEPS=vm adds what test-vm boots: QEMU, a Debian kernel, virtme-ng)
deps:
	scripts/deps.sh $(DEPS)

## images: the busybox and pause OCI archives the tests import (no registry needed)
images:
	tests/images/build.sh target/images

## test: the whole suite: unit, ttrpc round trips, root integration, end to end through CRI,
## ctr and Docker, against the static shim `make build` links (COVE_BIN), with the runc the containerd on PATH pins, from RUNC_DIR
## (../shared/runc) when it is there (scripts/runc.sh); it says which runc it used
## (tests named *_since_X_Y_Z need that containerd: older ones leave them out, as skipped;
## the user-namespace tests need a runc with idmapped mounts, 1.2+, and are skipped, said so,
## with an older one; unit tests that need root are #[ignore]d for `cargo test` as a user,
## and run here)
test: deps images build
	@runc_dir=$$(scripts/runc.sh); PATH="$${runc_dir:+$$runc_dir:}$$PATH"; export PATH; \
	echo "make test: containerd $$(containerd --version | awk '{print $$3}'), $$(runc --version | head -1) ($$(command -v runc)), shim $(BIN)"; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-fail-fast --run-ignored all -E "$$(scripts/test-filter.sh)"; \
	else \
		$(CARGO) test --no-fail-fast -- --skip _since_ --skip a_user_namespaced_pod --include-ignored; \
	fi

## test-vm: the tests that depend on the kernel, the cgroup version, the driver or systemd
## (scripts/vm/tests.sh) again in a guest kernel with pure cgroup v2, under QEMU: once with
## the cgroupfs driver, once with systemd as PID 1 and the systemd driver (VM_LEGS picks)
test-vm: DEPS += vm
test-vm: deps images build
	scripts/vm/run.sh $(VM_LEGS)

## test-matrix: the CRI end-to-end, task, escape, user-namespace and exec-drain suites
## against Debian's containerd and each of MATRIX_VERSIONS from CONTAINERD_DIR, one private containerd at a
## time, each with the runc it pins (from RUNC_DIR); a pass/fail table
test-matrix: deps images build
	scripts/matrix.sh $(CONTAINERD_DIR) $(MATRIX_VERSIONS)

## bench: cove against containerd's runc pod path in one private containerd, through CRI,
## and, in the same serial rounds, cove's shim alone over ttrpc against its floors (exec of
## a static binary, a bare clone into the pod's namespaces and cgroup, bare runc create + start);
## prints the tables with their goals and writes target/bench/report.md and
## target/bench/latency.svg (target/bench/runs.log: which full runs finished).
## Sizes: COVE_BENCH_N (serial pods and shim-alone rounds, 50), COVE_BENCH_BURST (20), COVE_BENCH_DENSITY (200),
## COVE_BENCH_CHURN (pods created and removed with every 10th shim killed, 200),
## COVE_BENCH_OUTPUT (MiB a container writes to stdout, 256); COVE_BENCH_ONLY=output runs that row alone, COVE_BENCH_ONLY=density the density rows, COVE_BENCH_ONLY=shim the shim-alone rows and their floors.
bench: deps images build
	$(CARGO) bench --bench pods

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

## demo: a private containerd with cove, one pod with two containers through CRI, their status, then stop and remove
demo: deps images build
	$(CARGO) run --quiet --release --example demo

install: build
	install -D -m 0755 $(BIN) /usr/local/bin/containerd-shim-cove-v1

clean:
	$(CARGO) clean
