# Persistent counters: sequence numbers never repeat across restarts; a corrupt file is refused.
import os

from node.store import RESERVE, Counters, StoreError

PATH = "_test_counters.dat"


def _clean():
    for p in (PATH, PATH + ".tmp"):
        try:
            os.remove(p)
        except OSError:
            pass


def test_first_boot_starts_at_one():
    _clean()
    c = Counters(PATH)
    assert c.boot == 1
    assert c.next_seq() == 1
    assert c.next_seq() == 2
    _clean()


def test_restart_never_reuses_a_number():
    _clean()
    seen = set()
    for boot in range(1, 5):
        c = Counters(PATH)
        assert c.boot == boot
        for _ in range(RESERVE + 3):  # crosses a reservation boundary
            s = c.next_seq()
            assert s not in seen
            seen.add(s)
    assert max(seen) < 4 * 2 * RESERVE + 1
    _clean()


def test_corrupt_file_is_refused():
    _clean()
    with open(PATH, "w") as f:
        f.write("v1 garbage")
    try:
        Counters(PATH)
    except StoreError as exc:
        assert PATH in str(exc)
    else:
        raise AssertionError("corrupt counters accepted")
    _clean()


def test_leftover_tmp_file_does_not_matter():
    _clean()
    c = Counters(PATH)
    last = c.next_seq()
    with open(PATH + ".tmp", "w") as f:
        f.write("v1 1")  # a torn write that never got renamed
    c = Counters(PATH)
    assert c.next_seq() > last
    _clean()
