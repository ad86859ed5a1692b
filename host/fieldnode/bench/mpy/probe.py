# Runs on the MicroPython Unix port, never on the host: the bench's observation point inside a virtual node.
#
#     micropython probe.py /path/to/firmware/main.py
#
# Wraps Sealer._seal (the one place every reading and alarm is sealed) so that each sealed message is
# announced on the console the moment it exists, then runs the board's real main.py unchanged:
#
#     bench-probe: sealed <type> <boot> <seq> <sha256 of the sealed bytes, first 8 bytes in hex>
#
# The line is written straight to stdout (unbuffered on the Unix port) before the firmware does anything
# else with the message, so a SIGKILL a moment later cannot un-announce it. The bench counts these lines
# as "produced" and checks the hash against what reached the fleet's store (never altered).
import sys
from binascii import hexlify
from hashlib import sha256

from node import seal

_seal = seal.Sealer._seal


def _announced(self, type_, body_len, boot, seq, iv):
    msg = _seal(self, type_, body_len, boot, seq, iv)
    print("bench-probe: sealed %d %d %d %s" % (type_, boot, seq, hexlify(sha256(msg).digest()[:8]).decode()))
    return msg


seal.Sealer._seal = _announced
print("bench-probe: up")
with open(sys.argv[1]) as f:
    exec(f.read(), {"__name__": "__main__"})
