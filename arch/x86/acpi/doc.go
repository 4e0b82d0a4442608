// Package acpi writes the ACPI tables of a vio guest into guest memory:
// RSDP (revision 2), XSDT, FADT (revision 6, hardware-reduced), MADT,
// an optional MCFG, and a DSDT whose AML this package assembles itself.
// Like package x86 it is pure: Write puts bytes into a *memory.Memory and
// nothing here calls KVM. The registers the tables point at are emulated
// by devices/acpipm; the vmm passes that package's port numbers in Config.
//
// # Where the tables live
//
// Everything sits in [TablesAddr, ResetVectorAddr+16), the top of the
// BIOS area that x86.E820Map already reports reserved, above the MP table
// at x86.MPTableAddr. The RSDP comes first, 16-byte aligned, so Linux
// finds it by scanning 0xE0000-0xFFFFF even when boot_params.acpi_rsdp_addr
// is not set. The MP table stays: an OS that does not use ACPI still
// finds CPUs and the IOAPIC there, and Linux prefers the MADT when both
// exist.
//
// # What Linux (6.1) does with them
//
// Table discovery: acpi_boot_table_init → acpi_find_root_pointer (or
// boot_params.acpi_rsdp_addr via x86_default_get_root_pointer) →
// acpi_tb_parse_root_table walks the XSDT (RSDP revision ≥ 2) and
// acpi_tb_parse_fadt installs the DSDT from X_DSDT. FIRMWARE_CTRL and
// X_FIRMWARE_CTRL are 0: with HW_REDUCED_ACPI set, ACPICA
// (acpi_tb_create_local_fadt sets acpi_gbl_reduced_hardware) neither
// installs a FACS nor converts or validates the PM1/PM2/PM timer/GPE
// blocks, which are all zero here.
//
// Hardware-reduced mode on x86: acpi_reduced_hw_init →
// acpi_generic_reduced_hw_init makes legacy_pic the null PIC and skips the
// PIT/HPET timer_init, so the guest runs on the local APIC timer and never
// programs the 8259. No SCI handler is installed (acpi_ev_install_xrupt_handlers
// returns early), but SCI_INT is still 9: acpi_parse_int_src_ovr treats
// any interrupt source override whose source IRQ equals SCI_INT as the
// SCI's, so SCI_INT 0 would hijack an IRQ0 override.
//
// Power-off: `poweroff` → kernel_power_off → acpi_power_off_prepare
// (acpi_sleep_prepare → acpi_enter_sleep_state_prep, which evaluates \_S5
// and takes SLP_TYPa from its first element) → acpi_power_off →
// acpi_enter_sleep_state(ACPI_STATE_S5) → acpi_hw_sleep_dispatch →
// acpi_hw_extended_sleep (the hardware-reduced path): it writes
// WAK_STS (0x80) to SLEEP_STATUS_REG, then (SLP_TYPa<<2 & 0x1C) | SLP_EN
// (0x20) to SLEEP_CONTROL_REG, and polls SLEEP_STATUS_REG for WAK_STS.
// acpi_sleep_state_supported(S5) requires \_S5 to evaluate and, in
// reduced mode, both sleep register addresses to be non-zero; otherwise
// no ACPI power-off handler is registered and the guest just halts. Both
// registers are 8-bit I/O-port GAS entries (bit width 8, offset 0, byte
// access), which acpi_hw_write/acpi_hw_read turn into single-byte
// in/out instructions.
//
// Reboot: acpi_reboot (reboot_type BOOT_ACPI, e.g. "reboot=acpi") checks
// FADT revision ≥ 2 and RESET_REG_SUP, then acpi_reset writes
// RESET_VALUE to RESET_REG, an I/O port, with one byte. But with
// HW_REDUCED_ACPI set, reboot_init picks BOOT_EFI unless reboot= is on
// the command line (efi_reboot_required is true in reduced mode and
// efi_runtime_disabled only reflects "efi=noruntime"); efi_reboot does
// nothing without EFI runtime services and the kernel falls through to
// BOOT_BIOS, machine_real_restart, which jumps to the BIOS reset vector
// F000:FFF0. vio has no BIOS, so Write puts a 9-byte real-mode stub
// there that writes RESET_VALUE to RESET_REG and halts: both paths end
// in the same register write.
//
// MADT: acpi_parse_madt takes the local APIC address; acpi_parse_lapic
// registers each enabled CPU (APIC ID = ACPI UID = index, like the MP
// table); acpi_parse_ioapic registers the IOAPIC (ID x86.IOAPICID, GSI base
// 0); acpi_parse_int_src_ovr applies the overrides; acpi_parse_lapic_nmi
// wants LINT1. ISA IRQs map to GSIs 1:1 as in KVM's default routing and
// the MP table. The IRQ0→GSI2 override that firmware usually lists is
// only right when the vmm routes the PIT to IOAPIC pin 2 (QEMU does, with
// KVM_SET_GSI_ROUTING); Config.TimerOverride adds it. In reduced mode
// Linux does not use the PIT interrupt either way.
//
// DSDT: \_S5 as above; \_SB.PCI0 is claimed by acpi_pci_root_add (_HID
// PNP0A08 with _CID PNP0A03 when there is an ECAM window, PNP0A03
// otherwise), whose _CRS (acpi_pci_probe_root_resources) gives the bus
// range, the 0xCF8 config ports, the I/O windows and the MMIO windows;
// \_SB.ECAM (PNP0C02) reserves the MCFG range, which pci_mmcfg_late_init
// requires (is_acpi_reserved) because the e820 map does not cover it;
// \_SB.COM1 (PNP0501) is bound by 8250_pnp, \_SB.KBD (PNP0303) by i8042's
// PNP probe, \_SB.RTC (PNP0B00) by rtc_cmos (x86's add_rtc_cmos then skips
// its platform device); these declarations are also what gives their ISA
// IRQs a mapping in reduced mode, where nr_legacy_irqs() is 0 and nothing
// sets up IRQs 0-15 in advance. \_SB.PEVT ("QEMU0001") is bound by
// pvpanic-mmio, which reads its capability byte and writes events to
// the port in its _CRS.
package acpi
