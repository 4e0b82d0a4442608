// Package sriov manages SR-IOV on the host: it finds the physical
// functions (PFs) sysfs shows, their virtual functions (VFs) with each
// one's driver, IOMMU group and the VM holding it; it enables and
// disables VFs and gives them to vfio-pci for pass-through (docs/vfio.md,
// "SR-IOV: vio sriov"). An NVMe PF's secondary controllers get their
// queue and interrupt resources and are brought online (nvme.go, through
// package nvmevirt); a NIC PF's VFs get their MAC, VLAN and policies over
// netlink (nic.go).
//
// Everything it reads from sysfs and /proc is checked before use (a
// value, a link's target); the roots are fields of Host so tests run on
// a tree of their own.
package sriov

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/viovmm/vio/sriov/nvmevirt"
	"github.com/viovmm/vio/vfio"
)

// NVMeController is a primary controller's admin interface.
type NVMeController interface {
	nvmevirt.Admin
	Close() error
}

// Host is the machine sriov works on.
type Host struct {
	Sys  string // the sysfs mount (default /sys)
	Proc string // the proc mount (default /proc)
	Dev  string // the device directory (default /dev), for /dev/nvmeN

	// Write puts value into the sysfs file path (default: open for
	// writing and write; tests record the writes and play the kernel).
	Write func(path, value string) error
	// Modprobe loads a kernel module (default: modprobe).
	Modprobe func(module string) error
	// OpenNVMe opens an NVMe primary controller's character device
	// (default: nvmevirt.Open).
	OpenNVMe func(path string) (NVMeController, error)
	// Log, when set, gets a line for each step taken.
	Log io.Writer
	// LiveTimeout bounds the wait for an NVMe PF to come back after the
	// reset that moves flexible resources off it (default 60 s).
	LiveTimeout time.Duration
}

func (h *Host) sys() string  { return or(h.Sys, "/sys") }
func (h *Host) proc() string { return or(h.Proc, "/proc") }
func (h *Host) dev() string  { return or(h.Dev, "/dev") }

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (h *Host) devices() string { return filepath.Join(h.sys(), "bus/pci/devices") }

func (h *Host) write(path, value string) error {
	w := h.Write
	if w == nil {
		w = writeSysfs
	}
	if err := w(path, value); err != nil {
		return fmt.Errorf("writing %q to %s: %w", strings.TrimSpace(value), path, unwrapPath(err))
	}
	return nil
}

// unwrapPath drops the *PathError's own path, which the caller's message
// already names.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func writeSysfs(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte(value))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (h *Host) modprobe(m string) error {
	if h.Modprobe != nil {
		return h.Modprobe(m)
	}
	out, err := exec.Command("modprobe", m).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (h *Host) openNVMe(path string) (NVMeController, error) {
	if h.OpenNVMe != nil {
		return h.OpenNVMe(path)
	}
	return nvmevirt.Open(path)
}

func (h *Host) logf(format string, args ...any) {
	if h.Log != nil {
		fmt.Fprintf(h.Log, format+"\n", args...)
	}
}

// PF is a physical function and its VFs.
type PF struct {
	BDF      string   `json:"bdf"`
	Vendor   string   `json:"vendor"` // 0x1b36
	Device   string   `json:"device"`
	Class    string   `json:"class"` // 0x010802 for NVMe
	Driver   string   `json:"driver"`
	Group    string   `json:"iommu_group"` // "" without an IOMMU
	TotalVFs int      `json:"total_vfs"`
	NumVFs   int      `json:"num_vfs"`
	Netdevs  []string `json:"netdevs,omitempty"` // a NIC's interfaces
	NVMe     string   `json:"nvme,omitempty"`    // an NVMe PF's controller, nvmeN
	VFs      []VF     `json:"vfs"`
	// NVMeNote says why the secondary controllers are not shown (not
	// root, the controller has no virtualization management).
	NVMeNote string `json:"nvme_note,omitempty"`
}

// VF is a virtual function.
type VF struct {
	Index  int          `json:"index"` // N of the PF's virtfnN; the NVMe VF number is N+1
	BDF    string       `json:"bdf"`
	Driver string       `json:"driver"`
	Group  string       `json:"iommu_group"`
	HeldBy *vfio.Holder `json:"held_by,omitempty"`
	// Secondary is an NVMe VF's secondary controller, when the PF's
	// controller could be asked.
	Secondary *nvmevirt.Secondary `json:"secondary,omitempty"`
}

// IsNVMe reports whether the PF is an NVMe controller.
func (p *PF) IsNVMe() bool { return p.Class == nvmeClass }

const nvmeClass = "0x010802"

var bdfRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)

// ParseBDF checks a PCI address a user gave (0000:01:00.0, or 01:00.0
// in domain 0) and returns it in sysfs's form.
func ParseBDF(s string) (string, error) {
	b := strings.ToLower(strings.TrimSpace(s))
	if strings.Count(b, ":") == 1 {
		b = "0000:" + b
	}
	if !bdfRE.MatchString(b) {
		return "", fmt.Errorf("%q is not a PCI address: give one like 0000:01:00.0 (lspci -D lists them)", s)
	}
	return b, nil
}

// parseCount parses a sysfs count (sriov_totalvfs, sriov_numvfs): a
// decimal the PCI capability holds in 16 bits.
func parseCount(b []byte) (int, error) {
	s := strings.TrimSpace(string(b))
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 0xffff || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("not a VF count: %q", truncate(s))
	}
	return n, nil
}

// virtfnIndex parses the N of a virtfnN link name.
func virtfnIndex(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, "virtfn")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 0xffff || strconv.Itoa(n) != s {
		return 0, false
	}
	return n, true
}

// parseHexID checks a sysfs vendor, device or class value (0x1b36).
func parseHexID(b []byte) (string, bool) {
	s := strings.TrimSpace(string(b))
	h, ok := strings.CutPrefix(s, "0x")
	if !ok || len(h) == 0 || len(h) > 8 {
		return "", false
	}
	if _, err := strconv.ParseUint(h, 16, 32); err != nil {
		return "", false
	}
	return strings.ToLower(s), true
}

func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

// readSmall reads a sysfs attribute, at most 4 KiB of it (a page is all
// sysfs gives; more is not sysfs).
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 4096))
}

// linkBase is the last element of the symlink path's target ("" if it
// is not a link).
func linkBase(path string) string {
	l, err := os.Readlink(path)
	if err != nil {
		return ""
	}
	return filepath.Base(l)
}

// ErrNotSRIOV means the device is not an SR-IOV physical function.
var ErrNotSRIOV = errors.New("not an SR-IOV physical function")

// List returns the host's PFs in address order, each with its VFs, who
// holds them and, for an NVMe PF, their secondary controllers.
func (h *Host) List() ([]PF, error) {
	ents, err := os.ReadDir(h.devices())
	if err != nil {
		return nil, fmt.Errorf("listing PCI devices: %w", err)
	}
	var out []PF
	for _, e := range ents {
		if !bdfRE.MatchString(e.Name()) {
			continue
		}
		if _, err := os.Stat(filepath.Join(h.devices(), e.Name(), "sriov_totalvfs")); err != nil {
			continue
		}
		pf, err := h.read(e.Name())
		if err != nil {
			return nil, err
		}
		h.fillSecondaries(&pf)
		out = append(out, pf)
	}
	h.fillHolders(out)
	return out, nil
}

// Get returns the PF at bdf (already checked by ParseBDF).
func (h *Host) Get(bdf string) (PF, error) {
	dir := filepath.Join(h.devices(), bdf)
	if _, err := os.Stat(dir); err != nil {
		return PF{}, fmt.Errorf("there is no PCI device %s: lspci -D lists them", bdf)
	}
	if _, err := os.Stat(filepath.Join(dir, "sriov_totalvfs")); err != nil {
		if _, perr := os.Stat(filepath.Join(dir, "physfn")); perr == nil {
			return PF{}, fmt.Errorf("%s is a virtual function (%w): name its PF, %s", bdf, ErrNotSRIOV, linkBase(filepath.Join(dir, "physfn")))
		}
		return PF{}, fmt.Errorf("%s is %w (it has no sriov_totalvfs): vio sriov list shows the host's PFs", bdf, ErrNotSRIOV)
	}
	pfs := []PF{{}}
	var err error
	if pfs[0], err = h.read(bdf); err != nil {
		return PF{}, err
	}
	h.fillHolders(pfs)
	return pfs[0], nil
}

// read reads one PF's sysfs directory.
func (h *Host) read(bdf string) (PF, error) {
	dir := filepath.Join(h.devices(), bdf)
	pf := PF{BDF: bdf, Driver: vfio.DriverOf(dir), Group: linkBase(filepath.Join(dir, "iommu_group")), VFs: []VF{}}
	for name, dst := range map[string]*string{"vendor": &pf.Vendor, "device": &pf.Device, "class": &pf.Class} {
		if b, err := readSmall(filepath.Join(dir, name)); err == nil {
			*dst, _ = parseHexID(b)
		}
	}
	var err error
	for name, dst := range map[string]*int{"sriov_totalvfs": &pf.TotalVFs, "sriov_numvfs": &pf.NumVFs} {
		b, rerr := readSmall(filepath.Join(dir, name))
		if rerr == nil {
			*dst, rerr = parseCount(b)
		}
		if rerr != nil && err == nil {
			err = fmt.Errorf("%s/%s: %w", dir, name, rerr)
		}
	}
	if err != nil {
		return pf, err
	}
	if ents, err := os.ReadDir(filepath.Join(dir, "net")); err == nil {
		for _, e := range ents {
			pf.Netdevs = append(pf.Netdevs, e.Name())
		}
	}
	if ents, err := os.ReadDir(filepath.Join(dir, "nvme")); err == nil {
		for _, e := range ents {
			if n, ok := strings.CutPrefix(e.Name(), "nvme"); ok && n != "" && strings.Trim(n, "0123456789") == "" {
				pf.NVMe = e.Name()
				break
			}
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		i, ok := virtfnIndex(e.Name())
		if !ok {
			continue
		}
		vbdf := linkBase(filepath.Join(dir, e.Name()))
		if !bdfRE.MatchString(vbdf) {
			continue // not a device link: not the kernel's
		}
		vdir := filepath.Join(h.devices(), vbdf)
		pf.VFs = append(pf.VFs, VF{Index: i, BDF: vbdf, Driver: vfio.DriverOf(vdir), Group: linkBase(filepath.Join(vdir, "iommu_group"))})
	}
	sort.Slice(pf.VFs, func(i, j int) bool { return pf.VFs[i].Index < pf.VFs[j].Index })
	return pf, nil
}

// fillHolders finds, in one scan of /proc, the process holding each VF's
// IOMMU group.
func (h *Host) fillHolders(pfs []PF) {
	var groups []string
	for _, p := range pfs {
		for _, v := range p.VFs {
			if v.Group != "" {
				groups = append(groups, v.Group)
			}
		}
	}
	held := vfio.GroupHolders(h.proc(), groups, -1)
	for i := range pfs {
		for j := range pfs[i].VFs {
			if hs := held[pfs[i].VFs[j].Group]; len(hs) > 0 && pfs[i].VFs[j].Group != "" {
				pfs[i].VFs[j].HeldBy = &hs[0]
			}
		}
	}
}

// ErrInUse means a VF is held by a VM.
var ErrInUse = vfio.ErrInUse

// checkFree refuses when a VF of pf is held by a VM, naming the VM.
func checkFree(pf PF) error {
	for _, v := range pf.VFs {
		if v.HeldBy != nil {
			return &vfio.InUseError{BDF: v.BDF, Holder: *v.HeldBy}
		}
	}
	return nil
}
