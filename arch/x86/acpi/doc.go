// Package acpi writes the ACPI tables of a vio guest into guest memory:
// RSDP (revision 2), XSDT, FADT (revision 6) with its FACS, MADT, an
// optional MCFG, and a DSDT whose AML this package assembles itself.
// Like package x86 it is pure: Write puts bytes into a *memory.Memory and
// nothing here calls KVM. The registers the tables point at are emulated
// by devices/acpipm; the vmm passes that package's port numbers in Config.
//
// The platform is a full ACPI PC, not a hardware-reduced one. With
// HW_REDUCED_ACPI Linux (acpi_generic_reduced_hw_init) installs the null
// legacy PIC, so nr_legacy_irqs() is 0 and the IOAPIC's IRQ domain hands
// out Linux IRQ numbers dynamically: COM1's GSI 4 became IRQ 25 (issue
// 20), while PC software assumes COM1 on 4, the i8042 on 1 and the RTC on
// 8. vio's platform was hardware-reduced until then.
//
// # Where the tables live
//
// Everything sits in [TablesAddr, ResetVectorAddr+16), the top of the
// BIOS area that x86.E820Map already reports reserved, above the MP table
// at x86.MPTableAddr. The RSDP comes first, 16-byte aligned, so Linux
// finds it by scanning 0xE0000-0xFFFFF even when boot_params.acpi_rsdp_addr
// is not set; the FACS follows the XSDT, 64-byte aligned as it must be.
// The MP table stays: an OS that does not use ACPI still finds CPUs and
// the IOAPIC there, and Linux prefers the MADT when both exist.
//
// # What Linux (6.1) does with them
//
// Table discovery: acpi_boot_table_init → acpi_find_root_pointer (or
// boot_params.acpi_rsdp_addr via x86_default_get_root_pointer) →
// acpi_tb_parse_root_table walks the XSDT (RSDP revision ≥ 2) and
// acpi_tb_parse_fadt installs the DSDT from X_DSDT and the FACS from
// FIRMWARE_CTRL and X_FIRMWARE_CTRL, which hold the same address (ACPICA
// in Linux prefers the 32-bit one when both are set; a FACS it cannot
// find is an error on a full ACPI machine). acpi_tb_convert_fadt builds
// its register descriptions from the X_ GAS blocks and warns where a
// legacy 32-bit address or length disagrees, so both are filled in;
// acpi_tb_setup_fadt_registers splits PM1a_EVT_BLK (4 bytes) into the
// 16-bit PM1_STS and PM1_EN.
//
// ACPI mode: SMI_CMD is 0, which tells ACPICA the machine is in ACPI mode
// already (acpi_hw_get_mode); SCI_EN in PM1_CNT reads 1 to agree. The SCI
// is SCI_INT 9: acpi_sci_ioapic_setup applies the MADT's override (level,
// active-high) and acpi_os_install_interrupt_handler requests IRQ 9 as
// "acpi". ACPICA then disables every fixed event and GPE, enables the
// global lock event (GBL_EN, which must read back as written) and, for
// each \_GPE._Exx/_Lxx method, that GPE (acpi_update_all_gpes). The power
// button is the fixed-feature one (the FADT flag that says "no fixed power
// button" is clear): acpi_bus_scan_fixed adds LNXPWRBN, the button driver
// ("Power Button [PWRF]") installs a fixed-event handler, which sets
// PWRBTN_EN, and turns each PWRBTN_STS SCI into KEY_POWER. There is no
// fixed sleep button and no PM timer (PM_TMR_BLK 0; see devices/acpipm).
//
// Legacy IRQs: with a real PIC, ISA IRQs 0-15 are IOAPIC pins 0-15 with
// fixed Linux IRQ numbers, the MADT's overrides applied; the SCI is the
// only one overridden here (and IRQ0 with Config.TimerOverride). The
// timer setup runs as on any PC (no HPET table: the PIT is the boot-time
// clockevent, on IOAPIC pin 0 as KVM routes it, until the local APIC
// timer takes over; kvm-clock is the clocksource).
//
// Power-off: `poweroff` → kernel_power_off → acpi_power_off_prepare
// (acpi_sleep_prepare → acpi_enter_sleep_state_prep, which evaluates \_S5
// and takes SLP_TYPa from its first element) → acpi_power_off →
// acpi_enter_sleep_state(ACPI_STATE_S5) → acpi_hw_legacy_sleep: it clears
// every PM1 and GPE status bit (write 1), disables the GPEs, writes
// SLP_TYPa into PM1_CNT, then SLP_TYPa with SLP_EN (16-bit writes, the
// other bits as read, SCI_EN included), and polls WAK_STS. The write with
// SLP_EN and SLP_TYP 5 is what devices/acpipm takes as power-off.
//
// Reboot: x86's default reboot type tries ACPI first: acpi_reboot checks
// FADT revision ≥ 2 and RESET_REG_SUP, then acpi_reset writes RESET_VALUE
// to RESET_REG, an I/O port, with one byte; then the keyboard controller.
// With "reboot=bios" the kernel jumps to the BIOS reset vector F000:FFF0
// (machine_real_restart). vio has no BIOS, so Write puts a 9-byte
// real-mode stub there that writes RESET_VALUE to RESET_REG and halts:
// every path ends in a reset the vmm sees.
//
// MADT: acpi_parse_madt takes the local APIC address; acpi_parse_lapic
// registers each enabled CPU (APIC ID = ACPI UID = index, like the MP
// table); acpi_parse_ioapic registers the IOAPIC (ID x86.IOAPICID, GSI base
// 0); acpi_parse_int_src_ovr applies the overrides; acpi_parse_lapic_nmi
// wants LINT1. ISA IRQs map to GSIs 1:1 as in KVM's default routing and
// the MP table. The IRQ0→GSI2 override that firmware usually lists is
// only right when the vmm routes the PIT to IOAPIC pin 2 (QEMU does, with
// KVM_SET_GSI_ROUTING); Config.TimerOverride adds it.
//
// DSDT: \_S5 as above; \_SB.PCI0 is claimed by acpi_pci_root_add (_HID
// PNP0A08 with _CID PNP0A03 when there is an ECAM window, PNP0A03
// otherwise), whose _CRS (acpi_pci_probe_root_resources) gives the bus
// range, the 0xCF8 config ports, the I/O windows and the MMIO windows;
// \_SB.ECAM (PNP0C02) reserves the MCFG range, which pci_mmcfg_late_init
// requires (is_acpi_reserved) because the e820 map does not cover it;
// \_SB.COM1 (PNP0501) is bound by 8250_pnp, \_SB.KBD (PNP0303) by i8042's
// PNP probe, \_SB.RTC (PNP0B00) by rtc_cmos (x86's add_rtc_cmos then skips
// its platform device), each with its ISA IRQ (4, 1, 8). vio's i8042 has
// no aux port, so there is no PS/2 mouse (PNP0F13, IRQ 12). \_SB.PEVT
// ("QEMU0001") is bound by pvpanic-mmio, which reads its capability byte
// and writes events to the port in its _CRS. With PCI hot plug,
// \_SB.PHPR, the slots under PCI0 and \_GPE._Exx (hotplug.go) replace
// the Generic Event Device a hardware-reduced machine would need.
package acpi
