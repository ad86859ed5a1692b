# Store-and-forward on the board's flash: every sealed message is written here before it is sent, and
# leaves only once the broker acknowledged it (MQTT QoS 1 PUBACK). The queue is also where sequence numbers
# persist: a restart resumes right after the last number on flash, so a power cut skips no number, and
# never reuses one.
#
# Layout, in `folder` (default "queue/"):
#   <8 hex digits>  a segment: up to SEGMENT_RECORDS records, named after the seq of its first record, its
#                   records numbered on from there without a hole (a failed write closes the segment)
#   head            "q1 <head_seq> <next_seq> <dropped>\n": every record below head_seq has left the queue,
#                   no seq below next_seq will be handed out again, `dropped` counts records the full queue
#                   threw away; replaced atomically (written as head.tmp, then renamed)
#
# Record: 0xA5, n (1 byte), the sealed message (n = 58 + 16k bytes, its header carries the seq), CRC-32
# of the length byte and the message (4 bytes, big-endian). A reading is 64 bytes on flash.
#
# Writing: a record goes out in one write followed by a flush (LittleFS: lfs_file_sync, the record is on
# flash when append() returns). Segments are only ever appended to, and a boot never appends to a segment
# of an earlier boot: it starts a new one, so whatever a power cut left at the end of a segment stays
# behind the records that count. Finished segments are removed whole once the head file is past them.
#
# Write amplification (LittleFS, 4 KiB blocks): appending after a sync copies the file's partly filled last
# block to a fresh block (littlefs is copy-on-write) and commits the new size to the directory's metadata
# log, so each 64-byte record costs one block erase plus on average half a block of programming: about
# 2 KiB written per record, ~33x. The head file (inline in the metadata, ~40 bytes) is rewritten once per
# COMMIT_EVERY acknowledgements or finished segment, counters.dat once per segment. At one reading per 10 s
# on a 2 MB filesystem that is ~17 erases per block per day, decades below the flash's 100k cycles.
#
# What a power cut leaves, and what happens at the next start:
#   - during a record's write: a torn record at the end of the newest segment; it fails its CRC, is never
#     sent, and its seq counts as used (the host sees it missing); the boot continues in a new segment
#   - between the write and the PUBACK: the record is replayed; if the broker had it, the host gets it
#     twice and keeps one, (node, seq) being unique. The stored bytes are sent, never re-sealed
#   - before the head file caught up with the acknowledgements: up to COMMIT_EVERY records are sent again
#   - while head.tmp was written or renamed: the old head file, the same as above
#   - after the head moved past a segment but before its removal: the segment is removed at the start
# A record that fails its check when read (flash decay) is skipped with the rest of its segment, counted in
# `lost` and logged; the host sees the gap.
import os
import struct

from micropython import const

try:
    from binascii import crc32 as _crc
except ImportError:  # a port built without binascii.crc32
    def _crc(data):
        crc = 0xFFFFFFFF
        for b in data:
            crc ^= b
            for _ in range(8):
                crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
        return crc ^ 0xFFFFFFFF

SEGMENT_RECORDS = const(64)
COMMIT_EVERY = const(16)
RECORD_BYTES = const(64)  # a reading or an alarm on flash, for sizing
_MAGIC = const(0xA5)
_FRAME = const(6)  # magic, length, CRC-32
_MIN_MSG = const(58)
_MAX_MSG = const(250)
_SEQ_AT = const(6)  # offset of seq in a sealed message's header (docs/protocol.md)
_MAX_RANGES = const(8)


class QueueError(Exception):
    pass


def _valid_len(n):
    return _MIN_MSG <= n <= _MAX_MSG and not (n - _MIN_MSG) % 16


def _seq_of(msg):
    # the seq in a sealed message's header (struct.unpack_from would allocate a tuple)
    return msg[_SEQ_AT] << 24 | msg[_SEQ_AT + 1] << 16 | msg[_SEQ_AT + 2] << 8 | msg[_SEQ_AT + 3]


def _say(*parts):
    print("fieldnode:", *parts)


class Queue:
    """A bounded FIFO of sealed messages on flash; see the top of this file.

    append(msg) stores the message sealed with seq `next_seq`; peek() gives the oldest one not yet
    acknowledged (seq in `peek_seq`); ack(seq) lets a message go, in any order; commit() persists the head,
    once per cycle. `count` records are on flash (what `capacity` bounds), waiting() of them not yet
    acknowledged; `dropped` (persisted) and `lost` (since start) count the ones that will never be sent."""

    def __init__(self, folder="queue", capacity=4096, floor=0, reserve=None, log=None):
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.folder = folder
        self.capacity = capacity
        self._reserve = reserve  # reserve(upto): persist that seqs up to `upto` may be in use
        self._log = log or _say
        self._wbuf = bytearray(_MAX_MSG + _FRAME)
        self._wmv = memoryview(self._wbuf)
        self._wn = 0  # the message length _wcrc and _wrec are views for
        self._wcrc = self._wrec = None
        self._rbuf = bytearray(_MAX_MSG + _FRAME)
        self._rmv = memoryview(self._rbuf)
        self._names = []  # first seq of each segment on flash, ascending
        self._counts = []  # records in each (the readable ones)
        self._h = 0  # index of the first segment that may hold a record >= head_seq
        self._acked = []  # [lo, hi] seq ranges acknowledged while older records still wait
        self._wf = None  # the segment this boot appends to
        self._cur = -1  # a seq whose byte offset in segment _names[_h] is known: where peek() walks from
        self._cur_off = 0
        self._cur_len = 0
        self._pending = 0  # head moves not yet in the head file
        self.count = 0
        self.dropped = 0
        self.lost = 0
        self.head_seq = 1
        self.next_seq = 1
        self.peek_seq = 0
        self._open(floor)

    # -- start ------------------------------------------------------------------------------------------

    def _path(self, name):
        return "%s/%08x" % (self.folder, name)

    def _open(self, floor):
        try:
            entries = os.listdir(self.folder)
        except OSError:
            os.mkdir(self.folder)
            entries = []
        names = []
        for e in entries:
            if len(e) == 8:
                try:
                    names.append(int(e, 16))
                except ValueError:
                    pass
        names.sort()
        head = self._read_head() if "head" in entries else None
        if head is not None:
            self.head_seq, next_seq, self.dropped = head
        elif names:
            # The head file is gone or damaged but records are here: send them all again (duplicates at
            # worst) and resume above the counters' floor as well (skips at worst).
            self._log("queue: head file missing or damaged: replaying every stored record")
            self.head_seq = names[0]
            next_seq = floor + 1
        else:
            # A new queue (or a lost one): start above everything counters.dat says may have been used.
            self.head_seq = next_seq = floor + 1
        for i in range(len(names)):
            name = names[i]
            if i + 1 < len(names) and names[i + 1] <= self.head_seq:
                self._remove(name)  # wholly behind the head: a cut came before its removal
                continue
            count, end, damage = self._scan(name)
            if end > next_seq:
                next_seq = end
            if damage:
                self._log("queue: segment %08x: %s after seq %d; numbers up to %d count as used"
                          % (name, damage, name + count - 1, end - 1))
            if count:
                self._names.append(name)
                self._counts.append(count)
                lo = self.head_seq if self.head_seq > name else name
                if name + count > lo:
                    self.count += name + count - lo
            else:
                self._remove(name)
        self.next_seq = next_seq
        if head is None:
            self._write_head()
        if self.count:
            self._log("queue: %d records waiting, next seq %d" % (self.count, next_seq))
        self._check_space()

    def _read_head(self):
        try:
            with open(self.folder + "/head") as f:
                parts = f.read(80).split()
            if len(parts) == 4 and parts[0] == "q1":
                return int(parts[1]), int(parts[2]), int(parts[3])
        except (OSError, ValueError):
            pass
        return None

    def _scan(self, name):
        """(readable records, first seq not used by this segment, what was wrong or None). Stops at the first
        record that fails its check; what follows is searched byte by byte for intact records, only to learn
        the highest seq this segment used (those records stay unread: the host sees them missing)."""
        b, mv = self._rbuf, self._rmv
        n = off = 0
        damage = None
        with open(self._path(name), "rb") as f:
            while True:
                got = f.readinto(mv[:2])
                if not got:
                    return n, name + n, None
                size = b[1] + 4
                if (got == 2 and b[0] == _MAGIC and _valid_len(b[1]) and f.readinto(mv[2:2 + size]) == size
                        and self._intact(name + n)):
                    n += 1
                    off += size + 2
                    continue
                break
            # A torn record (the usual case: power cut while writing) used one seq; decay may hide more.
            end = name + n + 1
            damage = "torn or unreadable record"
            pos = off + 1
            while True:
                f.seek(pos)
                if f.readinto(mv[:2]) != 2:
                    break
                if b[0] == _MAGIC and _valid_len(b[1]):
                    size = b[1] + 4
                    if f.readinto(mv[2:2 + size]) == size and self._intact(None):
                        seq = struct.unpack_from(">I", b, 2 + _SEQ_AT)[0]
                        if seq >= end and seq < name + 0x10000:
                            end = seq + 1
                pos += 1
        return n, end, damage

    def _intact(self, seq):
        """The record in the read buffer passes its CRC (and carries `seq`, unless None)."""
        b = self._rbuf
        n = b[1]
        if _crc(self._rmv[1:2 + n]) != struct.unpack_from(">I", b, 2 + n)[0]:
            return False
        return seq is None or struct.unpack_from(">I", b, 2 + _SEQ_AT)[0] == seq

    def _check_space(self):
        try:
            st = os.statvfs(self.folder)
        except (AttributeError, OSError):
            return
        need = (self.capacity - self.count + 2 * SEGMENT_RECORDS) * RECORD_BYTES
        free = st[0] * st[4]
        if free < need:
            self._log("queue: warning: %d bytes free, a full queue of %d records needs %d more"
                      % (free, self.capacity, need))

    # -- writing ----------------------------------------------------------------------------------------

    def append(self, msg):
        """Store the sealed message `msg` (its seq must be next_seq) on flash; return its seq. A full queue
        first drops its oldest record (counted in `dropped`, logged). Raises QueueError if the write fails:
        the message is then lost and its seq used (the host sees it missing)."""
        n = len(msg)
        seq = self.next_seq
        if not _valid_len(n) or _seq_of(msg) != seq:
            raise ValueError("not a sealed message with seq %d" % seq)
        while self.count >= self.capacity and self._drop_oldest():
            pass
        if self._wf is None or self._counts[-1] >= SEGMENT_RECORDS:
            try:
                self._start_segment(seq)
            except OSError as exc:  # nothing was written: the seq is still free
                self._close_tail()
                raise QueueError("cannot open a queue segment (%s)" % exc)
        w, mv = self._wbuf, self._wmv
        if n != self._wn:  # views for this length (every reading is 58 bytes): made once, not per record
            self._wn = n
            self._wcrc = mv[1:2 + n]
            self._wrec = mv[:n + _FRAME]
        w[0] = _MAGIC
        w[1] = n
        mv[2:2 + n] = msg
        struct.pack_into(">I", w, 2 + n, _crc(self._wcrc))
        try:
            self._wf.write(self._wrec)
            self._wf.flush()
        except OSError as exc:
            self._close_tail()  # never append behind what may be a torn record
            self.next_seq = seq + 1
            self.lost += 1
            raise QueueError("cannot store seq %d (%s): it is lost" % (seq, exc))
        self._counts[-1] += 1
        self.count += 1
        self.next_seq = seq + 1
        return seq

    def _start_segment(self, seq):
        self._close_tail()
        if self._reserve is not None:
            self._reserve(seq + SEGMENT_RECORDS - 1)
        self._wf = open(self._path(seq), "wb")
        self._names.append(seq)
        self._counts.append(0)

    def _close_tail(self):
        f, self._wf = self._wf, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def _drop_oldest(self):
        seq = self._first()
        if seq is None:
            return False
        self.dropped += 1
        self._log("queue full (%d records): dropped seq %d unsent, %d dropped in all"
                  % (self.capacity, seq, self.dropped))
        self._advance(seq + 1)
        return True

    # -- the head ---------------------------------------------------------------------------------------

    def _first(self):
        """The seq of the oldest record still to send, or None. Passes finished segments and acknowledged
        ranges on the way."""
        names, counts = self._names, self._counts
        while self._h < len(names):
            start = names[self._h]
            s = self.head_seq if self.head_seq > start else start
            if s < start + counts[self._h]:
                for r in self._acked:
                    if r[0] <= s <= r[1]:
                        self._acked.remove(r)
                        self._advance(r[1] + 1)
                        break
                else:
                    return s
                continue
            if self._h == len(names) - 1 and self._wf is not None:
                return None  # the segment being written: new records go on here
            self._h += 1
            self._cur = -1
        return None

    def _advance(self, to):
        """Every record below `to` has left the queue."""
        h = self.head_seq
        if to <= h:
            return
        names, counts = self._names, self._counts
        for i in range(self._h, len(names)):
            start = names[i]
            if start >= to:
                break
            lo = h if h > start else start
            hi = start + counts[i]
            if hi > to:
                hi = to
            if hi > lo:
                self.count -= hi - lo
        self.head_seq = to
        self._pending += 1
        acked = self._acked
        i = 0
        while i < len(acked):
            if acked[i][1] < to:
                acked.pop(i)
            else:
                i += 1

    def ack(self, seq):
        """The broker acknowledged `seq`: it may leave the queue."""
        if seq < self.head_seq:
            return
        if seq == self._first():
            if seq == self._cur:
                self._cur = seq + 1
                self._cur_off += self._cur_len
            self._advance(seq + 1)
            return
        for r in self._acked:
            if r[0] <= seq <= r[1]:
                return
            if seq == r[1] + 1:
                r[1] = seq
                return
        if len(self._acked) >= _MAX_RANGES:
            self._acked.pop(0)  # forgetting an acknowledgement only means sending that record again
        self._acked.append([seq, seq])

    def waiting(self):
        """Records not yet acknowledged (`count` less those acknowledged ahead of older ones)."""
        n = self.count
        for r in self._acked:
            n -= r[1] - r[0] + 1
        return n if n > 0 else 0

    def commit(self):
        """Persist the head when COMMIT_EVERY records left the queue or a segment is finished, and remove
        finished segments. Cheap when there is nothing to do; call it once per cycle."""
        self._first()
        h = self._h
        if not h and self._pending < COMMIT_EVERY:
            return
        if self._pending:
            self._write_head()
        for name in self._names[:h]:
            self._remove(name)
        del self._names[:h]
        del self._counts[:h]
        self._h = 0

    def _write_head(self):
        tmp = self.folder + "/head.tmp"
        with open(tmp, "w") as f:
            f.write("q1 %d %d %d\n" % (self.head_seq, self.next_seq, self.dropped))
        os.rename(tmp, self.folder + "/head")
        self._pending = 0

    def _remove(self, name):
        try:
            os.remove(self._path(name))
        except OSError:
            pass

    # -- reading ----------------------------------------------------------------------------------------

    def peek(self):
        """The oldest record not yet acknowledged, as a memoryview of the sealed message (valid until the next
        peek), or None; its seq is in `peek_seq`. A record that fails its check is skipped together with the
        rest of its segment (counted in `lost`, logged)."""
        while True:
            seq = self._first()
            if seq is None:
                return None
            i = self._h
            name = self._names[i]
            if self._cur < 0 or self._cur > seq:
                self._cur, self._cur_off = name, 0
            n = self._read(name, seq)
            if n:
                self.peek_seq = seq
                return self._rmv[2:2 + n]
            end = name + self._counts[i]
            self._log("queue: segment %08x unreadable from seq %d: %d records lost" % (name, seq, end - seq))
            self.lost += end - seq
            self.count -= end - seq
            self._counts[i] = seq - name
            if i == len(self._names) - 1:
                self._close_tail()
            self._cur = -1

    def _read(self, name, seq):
        """Read record `seq` of segment `name` into the read buffer, walking from the known offset; its
        message length, or 0 if it is not there intact."""
        b, mv = self._rbuf, self._rmv
        s, off = self._cur, self._cur_off
        try:
            with open(self._path(name), "rb") as f:
                while True:
                    f.seek(off)
                    if f.readinto(mv[:2]) != 2 or b[0] != _MAGIC or not _valid_len(b[1]):
                        return 0
                    size = b[1] + 4
                    if s == seq:
                        break
                    off += size + 2
                    s += 1
                if f.readinto(mv[2:2 + size]) != size or not self._intact(seq):
                    return 0
        except OSError:
            return 0
        self._cur, self._cur_off, self._cur_len = seq, off, size + 2
        return b[1]

    def close(self):
        """Close the segment being written (no commit: what a power cut would leave)."""
        self._close_tail()
