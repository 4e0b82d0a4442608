package kvm

// The struct layouts, ioctl numbers and constants in ztypes_linux_amd64.go come
// from the kernel's <linux/kvm.h> (package linux-libc-dev) via types_linux.go.
//go:generate go run ./internal/mkztypes -o ztypes_linux_amd64.go types_linux.go
