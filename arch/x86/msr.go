package x86

// MSREntry mirrors struct kvm_msr_entry without its padding.
type MSREntry struct {
	Index uint32
	Data  uint64
}

// MSR indices used at boot.
const (
	MSRIA32TSC           = 0x10
	MSRIA32SysenterCS    = 0x174
	MSRIA32SysenterESP   = 0x175
	MSRIA32SysenterEIP   = 0x176
	MSRIA32MiscEnable    = 0x1a0
	MSRMTRRDefType       = 0x2ff
	MSRStar              = 0xc0000081
	MSRLStar             = 0xc0000082
	MSRCStar             = 0xc0000083
	MSRSyscallMask       = 0xc0000084
	MSRKernelGSBase      = 0xc0000102
	MiscEnableFastString = 1 << 0
	mtrrEnable           = 1 << 11
	mtrrTypeWriteBack    = 6
)

// BootMSRs returns the MSR values every vCPU starts with: the syscall and
// sysenter MSRs cleared (Linux programs them), fast string operations
// enabled in IA32_MISC_ENABLE (what firmware does; Linux checks the bit
// before using rep movsb/stosb for memcpy/memset), and MTRRs enabled with
// write-back as the default memory type, so the guest does not run with
// caching effectively off until it sets up MTRRs itself. The TSC is
// not set: KVM keeps the vCPUs' TSCs in sync on its own.
func BootMSRs() []MSREntry {
	return []MSREntry{
		{Index: MSRIA32SysenterCS},
		{Index: MSRIA32SysenterESP},
		{Index: MSRIA32SysenterEIP},
		{Index: MSRStar},
		{Index: MSRLStar},
		{Index: MSRCStar},
		{Index: MSRSyscallMask},
		{Index: MSRKernelGSBase},
		{Index: MSRIA32MiscEnable, Data: MiscEnableFastString},
		{Index: MSRMTRRDefType, Data: mtrrEnable | mtrrTypeWriteBack},
	}
}
