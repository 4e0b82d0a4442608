package acpi

// Table returns a complete system description table for a table built
// outside this package (iommu/vtd's DMAR): the header every vio table
// carries, with signature sig and the given revision, then body, with
// the length and checksum filled in.
func Table(sig string, revision byte, body []byte) []byte {
	return seal(append(header(sig, revision), body...))
}
