# node.queue: store-and-forward on flash. Order, acknowledgements in any order, reopening after a power cut
# (no commit), torn and decayed records, a full queue, the seq floor backstop.
# Plain asserts: runs under pytest (CPython) and on the Unix port (mpyunit.py).
import os
import struct

from node.queue import COMMIT_EVERY, SEGMENT_RECORDS, Queue, QueueError
from node.store import Counters

_ROOT = "/tmp/fieldnode-test-queue-%d" % (id(object()) & 0xFFFFFF)


def _rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for n in names:
        p = path + "/" + n
        try:
            os.remove(p)
        except OSError:
            _rmtree(p)
    os.rmdir(path)


def _fresh():
    _rmtree(_ROOT)
    os.mkdir(_ROOT)
    return _ROOT + "/queue"


def msg(seq, n=58, type_=1):
    """A message shaped like a sealed one: the header carries type and seq, the rest marks the seq."""
    m = bytearray(n)
    struct.pack_into(">BBHHI", m, 0, 1, type_, 1, 1, seq)
    for i in range(10, n):
        m[i] = (seq * 7 + i) & 0xFF
    return m


def seq_of(view):
    return struct.unpack_from(">I", view, 6)[0]


class Log:
    def __init__(self):
        self.lines = []

    def __call__(self, *parts):
        self.lines.append(" ".join(str(p) for p in parts))


def drain(q, limit=100000):
    """Peek and ack everything; the seqs in the order they came, each checked against its bytes."""
    got = []
    while len(got) < limit:
        m = q.peek()
        if m is None:
            break
        s = q.peek_seq
        assert bytes(m) == bytes(msg(s, len(m), m[1])), s
        got.append(s)
        q.ack(s)
    return got


def fill(q, n, **kw):
    for _ in range(n):
        assert q.append(msg(q.next_seq, **kw)) == q.next_seq - 1


def segments(folder):
    return sorted(n for n in os.listdir(folder) if len(n) == 8)


def test_append_peek_ack_in_order():
    folder = _fresh()
    q = Queue(folder, 100, log=Log())
    assert q.next_seq == 1 and q.count == 0 and q.peek() is None
    fill(q, 5)
    assert q.count == 5
    assert drain(q) == [1, 2, 3, 4, 5]
    assert q.count == 0 and q.peek() is None and q.head_seq == 6
    q.close()
    _rmtree(_ROOT)


def test_longer_messages_and_alarms_keep_their_bytes():
    folder = _fresh()
    q = Queue(folder, 100, log=Log())
    q.append(msg(1, 74, 2))
    q.append(msg(2, 250))
    q.append(msg(3))
    assert drain(q) == [1, 2, 3]
    for bad in (msg(4, 57), msg(4, 60), msg(5)):
        try:
            q.append(bad)
        except ValueError:
            pass
        else:
            raise AssertionError("accepted a malformed message or a wrong seq")
    assert q.next_seq == 4
    q.close()
    _rmtree(_ROOT)


def test_acks_in_any_order():
    folder = _fresh()
    q = Queue(folder, 100, log=Log())
    fill(q, 8)
    for s in (6, 7, 8, 3):  # live messages acknowledged while older ones wait
        q.ack(s)
    assert q.count == 8 and q.waiting() == 4  # on flash until the head passes them, but not waiting
    m = q.peek()
    assert q.peek_seq == 1 and seq_of(m) == 1
    q.ack(1)
    q.ack(2)
    assert q.peek() is not None and q.peek_seq == 4  # 3 was acknowledged
    q.ack(4)
    q.ack(5)
    assert q.peek() is None and q.count == 0 and q.head_seq == 9
    q.ack(2)  # a late duplicate acknowledgement changes nothing
    assert q.count == 0 and q.head_seq == 9
    q.close()
    _rmtree(_ROOT)


def test_power_cut_without_commit_skips_no_number():
    folder = _fresh()
    q = Queue(folder, 100, log=Log())
    fill(q, 7)
    q.ack(1)
    q.ack(2)
    q.close()  # no commit: the head file still says nothing was acknowledged
    q = Queue(folder, 100, log=Log())
    assert q.next_seq == 8  # right after the last stored number: nothing skipped, nothing reused
    assert drain(q) == [1, 2, 3, 4, 5, 6, 7]  # 1 and 2 again: duplicates the host drops, never a loss
    fill(q, 2)
    assert drain(q) == [8, 9]
    q.close()
    _rmtree(_ROOT)


def test_commit_persists_the_head_and_removes_finished_segments():
    folder = _fresh()
    q = Queue(folder, 1000, log=Log())
    fill(q, 2 * SEGMENT_RECORDS + 10)
    assert len(segments(folder)) == 3
    got = drain(q, SEGMENT_RECORDS + 5)
    assert got == list(range(1, SEGMENT_RECORDS + 6))
    q.commit()
    assert len(segments(folder)) == 2  # the first segment is gone
    q.close()
    q = Queue(folder, 1000, log=Log())
    assert q.next_seq == 2 * SEGMENT_RECORDS + 11
    assert q.count == SEGMENT_RECORDS + 5
    assert drain(q) == list(range(SEGMENT_RECORDS + 6, 2 * SEGMENT_RECORDS + 11))
    q.commit()
    fill(q, 1)  # a new boot writes its own segment
    assert drain(q) == [2 * SEGMENT_RECORDS + 11]
    q.commit()
    assert segments(folder) == ["%08x" % (2 * SEGMENT_RECORDS + 11)]
    q.close()
    _rmtree(_ROOT)


def test_head_file_lags_by_at_most_commit_every():
    folder = _fresh()
    q = Queue(folder, 1000, log=Log())
    fill(q, 40)
    for _ in range(COMMIT_EVERY + 3):
        q.peek()
        q.ack(q.peek_seq)
        q.commit()
    q.close()
    q = Queue(folder, 1000, log=Log())
    resent = drain(q)
    assert resent[-1] == 40
    assert 40 - len(resent) >= COMMIT_EVERY  # the acknowledged ones before the last head write stay gone
    assert len(resent) <= 40 - (COMMIT_EVERY + 3) + COMMIT_EVERY
    q.close()
    _rmtree(_ROOT)


def test_records_of_several_boots_replay_in_order():
    folder = _fresh()
    for boot in range(3):
        q = Queue(folder, 1000, log=Log())
        fill(q, 3)
        q.close()
    q = Queue(folder, 1000, log=Log())
    assert len(segments(folder)) == 3 and q.count == 9
    assert drain(q) == list(range(1, 10))
    q.close()
    _rmtree(_ROOT)


def _append_bytes(path, data):
    with open(path, "ab") as f:
        f.write(data)


def test_torn_record_is_skipped_and_its_number_counts_as_used():
    folder = _fresh()
    log = Log()
    q = Queue(folder, 100, log=log)
    fill(q, 3)
    q.close()
    seg = folder + "/" + segments(folder)[0]
    record = bytearray(64)
    record[0], record[1] = 0xA5, 58
    record[2:60] = msg(4)
    _append_bytes(seg, record[:30])  # power cut in the middle of writing seq 4
    q = Queue(folder, 100, log=log)
    assert q.count == 3
    assert q.next_seq == 5  # 4 was being written: it is missing, and never handed out again
    assert any("torn" in line for line in log.lines), log.lines
    fill(q, 2)
    assert drain(q) == [1, 2, 3, 5, 6]
    q.close()
    q = Queue(folder, 100, log=log)  # the torn segment is an older one now: nothing changes
    assert q.next_seq == 7
    q.close()
    _rmtree(_ROOT)


def test_a_torn_first_record_of_a_boot():
    folder = _fresh()
    q = Queue(folder, 100, log=Log())
    fill(q, 2)
    q.close()
    with open(folder + "/%08x" % 3, "wb") as f:  # the next boot's segment, torn in its first record
        f.write(b"\xa5\x3a\x01\x01")
    q = Queue(folder, 100, log=Log())
    assert q.next_seq == 4 and q.count == 2
    assert drain(q) == [1, 2]
    q.close()
    _rmtree(_ROOT)


def test_decayed_record_loses_the_rest_of_its_segment_but_no_number_is_reused():
    folder = _fresh()
    log = Log()
    q = Queue(folder, 100, log=log)
    fill(q, 10)
    q.close()
    seg = folder + "/" + segments(folder)[0]
    with open(seg, "rb") as f:
        data = bytearray(f.read())
    data[4 * 64 + 20] ^= 0x40  # one bit of seq 5
    with open(seg, "wb") as f:
        f.write(data)
    q = Queue(folder, 100, log=log)
    assert q.next_seq == 11  # the intact records after the bad one still count as used
    assert drain(q) == [1, 2, 3, 4]
    fill(q, 1)
    assert drain(q) == [11]
    q.close()
    _rmtree(_ROOT)


def test_a_record_that_decays_while_queued_is_counted_lost():
    folder = _fresh()
    log = Log()
    q = Queue(folder, 100, log=log)
    fill(q, 6)
    seg = folder + "/" + segments(folder)[0]
    with open(seg, "rb") as f:
        data = bytearray(f.read())
    data[2 * 64 + 30] ^= 0x01  # seq 3
    with open(seg, "wb") as f:
        f.write(data)
    assert drain(q) == [1, 2]
    assert q.lost == 4 and q.count == 0
    assert any("unreadable" in line for line in log.lines), log.lines
    fill(q, 1)  # goes to a new segment: nothing is appended behind the damage
    assert q.next_seq == 8 and drain(q) == [7]
    q.close()
    _rmtree(_ROOT)


def test_full_queue_drops_the_oldest_counted_and_logged():
    folder = _fresh()
    log = Log()
    q = Queue(folder, 16, log=log)
    fill(q, 40)
    assert q.count == 16 and q.dropped == 24
    assert sum(1 for line in log.lines if "queue full" in line) == 24
    assert "dropped seq 24 " in log.lines[-1]
    q.commit()
    q.close()
    q = Queue(folder, 16, log=log)
    assert q.dropped == 24  # persisted with the head
    assert drain(q) == list(range(25, 41))
    q.close()
    _rmtree(_ROOT)


def test_dropping_skips_records_already_acknowledged():
    folder = _fresh()
    q = Queue(folder, 16, log=Log())
    fill(q, 16)
    for s in range(2, 17):  # everything but 1 went out live
        q.ack(s)
    fill(q, 1)  # full: 1 is dropped, the rest were delivered, not dropped
    assert q.dropped == 1
    assert drain(q) == [17]
    q.close()
    _rmtree(_ROOT)


class _Failing:
    def write(self, data):
        raise OSError(28, "ENOSPC")

    def flush(self):
        pass

    def close(self):
        pass


def test_a_failed_write_uses_its_number_and_starts_a_new_segment():
    folder = _fresh()
    q = Queue(folder, 100, log=Log())
    fill(q, 2)
    q._wf = _Failing()
    try:
        q.append(msg(3))
    except QueueError as exc:
        assert "seq 3" in str(exc)
    else:
        raise AssertionError("no QueueError")
    assert q.next_seq == 4 and q.lost == 1
    fill(q, 1)
    assert drain(q) == [1, 2, 4]
    assert segments(folder) == ["%08x" % 1, "%08x" % 4]
    q.close()
    _rmtree(_ROOT)


def test_the_counters_floor_is_the_backstop_for_a_lost_queue():
    folder = _fresh()
    counters_path = _ROOT + "/counters.dat"
    c = Counters(counters_path)
    q = Queue(folder, 100, c.floor, c.reserve, Log())
    fill(q, 3)
    assert c.floor == SEGMENT_RECORDS  # the first segment reserved its numbers
    q.close()
    _rmtree(folder)  # the queue is gone (a new filesystem, a deleted folder)
    c = Counters(counters_path)
    q = Queue(folder, 100, c.floor, c.reserve, Log())
    assert q.next_seq == SEGMENT_RECORDS + 1  # skips, never reuses
    q.close()
    _rmtree(_ROOT)


def test_a_damaged_head_file_replays_everything_and_resumes_above_the_floor():
    folder = _fresh()
    q = Queue(folder, 100, 0, None, Log())
    fill(q, 20)
    for s in range(1, 18):
        q.ack(s)
    q.commit()
    q.close()
    with open(folder + "/head", "w") as f:
        f.write("garbage")
    log = Log()
    q = Queue(folder, 100, 64, None, log)
    assert q.next_seq == 65
    assert drain(q) == list(range(1, 21))
    assert any("head file" in line for line in log.lines), log.lines
    q.close()
    _rmtree(_ROOT)


def test_capacity_bounds_what_reopens():
    folder = _fresh()
    q = Queue(folder, 1000, log=Log())
    fill(q, 30)
    q.close()
    log = Log()
    q = Queue(folder, 16, log=log)  # a smaller queue after a config change
    fill(q, 1)
    assert q.count == 16 and q.dropped == 15
    assert drain(q) == list(range(16, 32))
    q.close()
    _rmtree(_ROOT)
