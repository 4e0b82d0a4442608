# vio's two entry points are `make demo` and `make test` (see README.md).
GO ?= go
# 5 s a target keeps the fuzz pass (74 targets) near 8 minutes, so that
# CI stays under 45; `make test FUZZTIME=1m` fuzzes longer.
FUZZTIME ?= 5s

.PHONY: all build setup demo test test-passthrough test-distro soak-migration vet clean

all: build

# No cgo: a pure-Go vio can put all its threads under Landlock
# (docs/security.md), and a static binary runs in the lab and in a chroot.
build:
	CGO_ENABLED=0 $(GO) build -o bin/ ./cmd/...

setup:
	./scripts/setup-host

# Boot the demo VM with vio and show its I/O working (in the lab when this
# host has no hardware virtualization).
demo: setup build
	./scripts/demo

# The whole test suite: unit tests, tiny guests on this host's /dev/kvm
# (in the lab if it has none), real Linux guests in the lab, and short
# fuzzing of every fuzz target. Ends with skipped tests and their reasons,
# the wall time and one line counting what ran.
test: vet
	$(GO) run ./cmd/vio-suite -fuzztime $(FUZZTIME)

# VFIO pass-through of an NVMe controller, in a lab of its own (an
# emulated IOMMU and NVMe in L1): opt-in, see e2e/passthrough.
test-passthrough:
	VIO_PASSTHROUGH=1 $(GO) run ./cmd/vio-suite -no-fuzz ./e2e/passthrough

# A real Debian bookworm image (debootstrap, built once and cached; needs
# root and the network the first time) booted by vio and by QEMU with
# SeaBIOS in one lab: opt-in, see e2e/debian and docs/distro.md.
test-distro:
	VIO_DISTRO=1 $(GO) run ./cmd/vio-suite -no-fuzz ./e2e/debian

# Live migration's soak: 20 TCP (pre-copy) and 20 same-host migrations
# in a row of one dirtying guest, and 20 hops of a guest writing its disks
# with fio while it holds a TCP connection (the suite makes a few of each).
soak-migration:
	VIO_MIGRATION_HOPS=20 $(GO) test -count=1 -timeout 90m -v -run '^(TestLiveMigration|TestLocalMigration|TestMigrationDisk)$$' ./e2e

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

clean:
	rm -rf bin
