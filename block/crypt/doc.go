// Package crypt is transparent disk encryption: a block.Backend interposer
// that stores its child's data encrypted with AES-XTS (aes-xts-plain64) in
// the LUKS2 on-disk format, so that an image vio formats opens with
// cryptsetup and dm-crypt, and an image cryptsetup formats opens here.
//
// The package is split by concern:
//
//   - header.go: the binary header (both copies, their checksums, which copy
//     wins) and writing it back;
//   - metadata.go: the JSON metadata (keyslots, segments, digests, config)
//     and the checks that keep a hostile header from reaching the rest;
//   - keyslot.go, af.go: passphrase → key (argon2id, pbkdf2), the
//     anti-forensic splitter, unlocking, adding and removing keyslots;
//   - sector.go, aeskey.go, aesni_amd64.s: the XTS data path over sectors
//     of 512 to 4096 bytes (AES-NI, eight blocks at a time, where the CPU
//     has it);
//   - crypt.go: the interposer (Open, Format) over a child back-end.
//
// What the guest sees is the LUKS2 data segment: the child's bytes from the
// segment's offset on, in the segment's sectors. A ciphertext sector that is
// all zero reads as a plaintext sector of zeroes (XTS produces such a
// ciphertext with probability 2^-4096): so a freshly created image, and a
// range freed by a passed-through discard, read as zeroes, as the
// block.Backend contract asks. dm-crypt reads those sectors as noise; both
// sides agree on every sector that was written.
//
// Key material (the volume key, the passphrase the caller passes and
// everything derived from it) is wiped when no longer needed and on Close,
// and never appears in an error or a log line. One limit stands: the AES key
// schedules inside crypto/aes (the tweak key's always, the data key's
// where there is no AES-NI path) cannot be reached from outside the
// standard library, so they are dropped, not zeroed; the AES-NI path's
// round keys are this package's and are zeroed.
package crypt
