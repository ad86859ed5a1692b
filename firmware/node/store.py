# Persistent counters: the boot counter, and a floor for sequence numbers that survives losing the queue.
#
# The message queue (node/queue.py) is where sequence numbers are persisted: every sealed message is on
# flash, with its seq, before it is sent, so after a restart the node resumes right after the last number it
# stored and never skips one. This file is the backstop for a queue that is gone (a new filesystem, a
# deleted folder): `floor` says every number up to it may have been used. The queue raises it one segment
# ahead (64 numbers) whenever it opens a new segment file, and a fresh queue starts above it, so a node can
# skip numbers after losing its queue, but never reuse one.
#
# File: "v1 <boot> <floor>\n" (ASCII). Writes go to a temporary file renamed over the old one (atomic on
# LittleFS and POSIX), so a power cut leaves either the old or the new state, never a torn one. Older
# firmware wrote the same format with a seq high-water mark reserved ahead of use: it reads as a floor.
import os


class StoreError(Exception):
    pass


class Counters:
    def __init__(self, path="counters.dat"):
        self._path = path
        boot, self.floor = self._load()
        self.boot = (boot + 1) & 0xFFFF
        self._write()

    def _load(self):
        try:
            with open(self._path) as f:
                text = f.read(64)
        except OSError:
            return 0, 0  # first boot
        parts = text.split()
        try:
            if len(parts) == 3 and parts[0] == "v1":
                return int(parts[1]), int(parts[2])
        except ValueError:
            pass
        # Starting again at 0 could reuse sequence numbers: refuse and let the operator decide.
        raise StoreError("%s is corrupt: restore it or re-provision the node" % self._path)

    def _write(self):
        tmp = self._path + ".tmp"
        with open(tmp, "w") as f:
            f.write("v1 %d %d\n" % (self.boot, self.floor))
        os.rename(tmp, self._path)

    def reserve(self, upto):
        """Record that sequence numbers up to `upto` may be in use (written before they are)."""
        if upto > self.floor:
            self.floor = upto
            self._write()
