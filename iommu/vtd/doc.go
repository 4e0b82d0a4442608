// Package vtd emulates one Intel VT-d DMA-remapping unit (Intel
// Virtualization Technology for Directed I/O, legacy translation mode) for
// a guest: the register file the guest's IOMMU driver programs, the
// translation of device addresses through the guest's root, context and
// second-level page tables, the caches that translation fills (context
// cache and IOTLB) and the invalidations that empty them, register-based
// and queued, fault recording with its interrupt, and the ACPI DMAR table
// that tells the guest where the unit is.
//
// A device model reaches guest memory through Unit.DMA(sourceID), a
// memory.DMA that translates every access; an access the guest's tables
// do not allow fails with memory.ErrNotMapped and is reported to the guest
// as a DMAR fault, never performed. Unit implements bus.Device for its
// RegisterSize bytes of MMIO registers.
//
// What the unit offers the guest (see cap and ecap in registers.go):
//   - legacy (non-scalable) mode: root table, context entries, second-level
//     page tables with 3 or 4 levels (39- or 48-bit guest addresses),
//     2 MiB and 1 GiB superpages, pass-through contexts;
//   - register-based context and IOTLB invalidation (global, domain,
//     device or page-selective) and queued invalidation with wait
//     descriptors;
//   - primary fault logging with NumFaultRecords registers and the fault
//     event interrupt; 16-bit domain ids; caching mode on request
//     (Config.CachingMode), so that the guest invalidates after mapping and
//     a Notifier can follow its mappings: it hears every invalidation and
//     change of translation and can read devices' contexts and walk their
//     domains (Tables), which iommu/vfiomap uses to make a host VFIO
//     container follow the guest.
//
// What it does not model: interrupt remapping (ECAP.IR is 0), device-TLBs
// and ATS (ECAP.DT is 0), scalable mode and PASIDs, first-level
// translation, nested translation, page request, advanced fault logging,
// protected memory regions (CAP.PLMR/PHMR are 0) and snoop control.
package vtd
