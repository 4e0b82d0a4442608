# A test-only aes-xts-plain64 oracle (OpenSSL's XTS through Python's
# cryptography module), standing in for dm-crypt where the kernel has no
# device mapper: it reads or writes the data segment of a LUKS2 image with
# a volume key that cryptsetup dumped.
#
#   xts.py dec KEYHEX SECTOR IVTWEAK IMAGE OFFSET LENGTH > plaintext
#   xts.py enc KEYHEX SECTOR IVTWEAK IMAGE OFFSET LENGTH < plaintext
#
# The IV of a sector is its position in 512-byte units from the start of
# the segment plus iv_tweak, little-endian (plain64), whatever the sector
# size, as dm-crypt computes it for LUKS2.
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

mode, keyhex, ss, ivt, path, off, length = sys.argv[1:8]
key, ss, ivt, off, length = bytes.fromhex(keyhex), int(ss), int(ivt), int(off), int(length)
assert length % ss == 0
with open(path, "r+b") as f:
    if mode == "dec":
        f.seek(off)
        data = f.read(length)
    else:
        data = sys.stdin.buffer.read()
        assert len(data) == length
    out = bytearray()
    for i in range(0, length, ss):
        c = Cipher(algorithms.AES(key), modes.XTS((ivt + i // 512).to_bytes(16, "little")))
        op = c.encryptor() if mode == "enc" else c.decryptor()
        out += op.update(data[i:i + ss]) + op.finalize()
    if mode == "dec":
        sys.stdout.buffer.write(out)
    else:
        f.seek(off)
        f.write(out)
