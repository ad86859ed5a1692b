# Persistent counters: the boot counter and a sequence number that never repeats, across power loss.
#
# The sequence high-water mark is reserved RESERVE numbers ahead and written before any of them is used,
# so a power cut at any instant loses at most the unused rest of a reservation, never reuses a number.
# Writes go to a temporary file that is then renamed over the old one (atomic on LittleFS and POSIX),
# so a torn write leaves the previous state intact.
import os

from micropython import const

RESERVE = const(32)


class StoreError(Exception):
    pass


class Counters:
    def __init__(self, path="counters.dat"):
        self._path = path
        boot, reserved = self._load()
        self.boot = (boot + 1) & 0xFFFF
        self._next = reserved + 1  # first number after the last reservation: never handed out before
        self._reserved = 0
        self._reserve()

    def _load(self):
        try:
            with open(self._path) as f:
                text = f.read()
        except OSError:
            return 0, 0  # first boot
        parts = text.split()
        try:
            if len(parts) == 3 and parts[0] == "v1":
                return int(parts[1]), int(parts[2])
        except ValueError:
            pass
        # Restarting at 0 would reuse sequence numbers: refuse and let the operator decide.
        raise StoreError("%s is corrupt: restore it or re-provision the node" % self._path)

    def _reserve(self):
        self._reserved = self._next + RESERVE - 1
        tmp = self._path + ".tmp"
        with open(tmp, "w") as f:
            f.write("v1 %d %d\n" % (self.boot, self._reserved))
        os.rename(tmp, self._path)

    def next_seq(self):
        if self._next > self._reserved:
            self._reserve()
        seq = self._next
        self._next += 1
        return seq
