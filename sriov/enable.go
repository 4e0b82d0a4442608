package sriov

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/viovmm/vio/vfio"
)

// Options are what `vio sriov enable` may set beyond the VF count.
type Options struct {
	// VQ and VI are an NVMe VF's queue and interrupt resources (0: the
	// flexible pools split evenly over the VFs).
	VQ, VI int
}

// Enable gives the PF at bdf n VFs, each bound to vfio-pci and, on an
// NVMe PF, with its secondary controller resourced and online. The VFs'
// host drivers do not probe them (sriov_drivers_autoprobe=0), so no host
// driver holds a VF that is meant for a guest, not even for a moment. A
// PF that has a different number of VFs goes to 0 first, which the
// kernel requires; that is refused while a VM holds one of them.
func (h *Host) Enable(bdf string, n int, o Options) error {
	pf, err := h.Get(bdf)
	if err != nil {
		return err
	}
	if n < 1 {
		return fmt.Errorf("enable needs 1 or more VFs, not %d: vio sriov disable %s turns them off", n, bdf)
	}
	if n > pf.TotalVFs {
		return fmt.Errorf("%s has at most %d VFs (sriov_totalvfs), not %d", bdf, pf.TotalVFs, n)
	}
	if pf.Group == "" {
		return fmt.Errorf("%w: %s has no IOMMU group, so its VFs could not be passed through: boot the host with intel_iommu=on (Intel) or amd_iommu=on (AMD) and the IOMMU on in its firmware", vfio.ErrNoIOMMU, bdf)
	}
	if o.VQ < 0 || o.VI < 0 {
		return fmt.Errorf("--vq and --vi are counts of resources per VF, not %d and %d", o.VQ, o.VI)
	}
	var nv *nvmeSetup
	if pf.IsNVMe() {
		if nv, err = h.openNVMeSetup(pf); err != nil {
			return err
		}
		defer nv.close()
	} else if o.VQ != 0 || o.VI != 0 {
		return fmt.Errorf("--vq and --vi are NVMe resources, and %s is not an NVMe controller", bdf)
	}
	if pf.NumVFs == n && (nv == nil || nv.allOnline(n)) {
		h.logf("%s: already has %d VFs", bdf, n)
		return h.bindAll(bdf)
	}
	if pf.NumVFs != 0 {
		if err := checkFree(pf); err != nil {
			return err
		}
		h.logf("%s: %d VFs to 0 first (the kernel changes the count only from 0)", bdf, pf.NumVFs)
		if err := h.write(filepath.Join(h.devices(), bdf, "sriov_numvfs"), "0"); err != nil {
			return err
		}
	}
	if nv != nil {
		// Resources are assigned while the secondaries are offline and
		// before their VFs exist.
		if err := nv.prepare(n, o); err != nil {
			return err
		}
	}
	dir := filepath.Join(h.devices(), bdf)
	if err := h.write(filepath.Join(dir, "sriov_drivers_autoprobe"), "0"); err != nil {
		return err
	}
	h.logf("%s: enabling %d VFs", bdf, n)
	if err := h.write(filepath.Join(dir, "sriov_numvfs"), fmt.Sprint(n)); err != nil {
		return err
	}
	if nv != nil {
		// A secondary goes online only once its VF exists.
		if err := nv.online(n); err != nil {
			return err
		}
	}
	return h.bindAll(bdf)
}

// bindAll binds every VF of the PF to vfio-pci.
func (h *Host) bindAll(bdf string) error {
	pf, err := h.read(bdf)
	if err != nil {
		return err
	}
	if len(pf.VFs) != pf.NumVFs {
		return fmt.Errorf("%s has sriov_numvfs %d but %d virtfn links: the kernel did not create its VFs (dmesg says why)", bdf, pf.NumVFs, len(pf.VFs))
	}
	for _, v := range pf.VFs {
		if v.Group == "" {
			return fmt.Errorf("%w: VF %s has no IOMMU group: boot the host with intel_iommu=on (Intel) or amd_iommu=on (AMD)", vfio.ErrNoIOMMU, v.BDF)
		}
		if err := h.BindVFIO(v.BDF); err != nil {
			return err
		}
	}
	return nil
}

// Disable turns the PF's VFs off, refusing while a VM holds one.
func (h *Host) Disable(bdf string) error {
	pf, err := h.Get(bdf)
	if err != nil {
		return err
	}
	if pf.NumVFs == 0 {
		h.logf("%s: has no VFs", bdf)
		return nil
	}
	if err := checkFree(pf); err != nil {
		return err
	}
	h.logf("%s: disabling %d VFs", bdf, pf.NumVFs)
	if err := h.write(filepath.Join(h.devices(), bdf, "sriov_numvfs"), "0"); err != nil {
		return err
	}
	if pf.IsNVMe() && pf.NVMe != "" {
		// Give the secondaries' resources back to the pool: a later
		// enable may split it differently. Not doing so leaves nothing
		// broken, so a failure is only reported.
		if nv, err := h.openNVMeSetup(pf); err == nil {
			nv.release(pf.NumVFs)
			nv.close()
		}
	}
	return nil
}

// BindVFIO gives PCI device bdf to vfio-pci: driver_override so that no
// other driver takes it, off its current driver, and a probe.
func (h *Host) BindVFIO(bdf string) error {
	dir := filepath.Join(h.devices(), bdf)
	cur := vfio.DriverOf(dir)
	if cur == "vfio-pci" {
		return nil
	}
	drv := filepath.Join(h.sys(), "bus/pci/drivers/vfio-pci")
	if _, err := os.Stat(drv); err != nil {
		h.logf("loading vfio-pci")
		if err := h.modprobe("vfio-pci"); err != nil {
			return fmt.Errorf("the vfio-pci driver is not loaded and modprobe vfio-pci failed (%v): install the kernel's vfio-pci module", err)
		}
		if _, err := os.Stat(drv); err != nil {
			return fmt.Errorf("modprobe vfio-pci ran but %s is missing: the kernel has no vfio-pci driver", drv)
		}
	}
	if err := h.write(filepath.Join(dir, "driver_override"), "vfio-pci"); err != nil {
		return err
	}
	if cur != "" {
		if err := h.write(filepath.Join(dir, "driver/unbind"), bdf); err != nil {
			return err
		}
	}
	if err := h.write(filepath.Join(h.sys(), "bus/pci/drivers_probe"), bdf); err != nil {
		return err
	}
	if got := vfio.DriverOf(dir); got != "vfio-pci" {
		return fmt.Errorf("%s is bound to %q, not vfio-pci, after the probe: dmesg says why", bdf, got)
	}
	h.logf("%s: bound to vfio-pci", bdf)
	return nil
}

// Return gives a VF back to the host: off vfio-pci, driver_override
// cleared, and a probe so its host driver may take it. Refused while a VM
// holds it.
func (h *Host) Return(bdf string) error {
	dir := filepath.Join(h.devices(), bdf)
	if g := linkBase(filepath.Join(dir, "iommu_group")); g != "" {
		if hs := vfioHolders(h, g); len(hs) > 0 {
			return &vfio.InUseError{BDF: bdf, Holder: hs[0]}
		}
	}
	if vfio.DriverOf(dir) == "vfio-pci" {
		if err := h.write(filepath.Join(dir, "driver/unbind"), bdf); err != nil {
			return err
		}
	}
	if err := h.write(filepath.Join(dir, "driver_override"), "\n"); err != nil {
		return err
	}
	return h.write(filepath.Join(h.sys(), "bus/pci/drivers_probe"), bdf)
}

func vfioHolders(h *Host, group string) []vfio.Holder {
	return vfio.GroupHolders(h.proc(), []string{group}, -1)[group]
}
