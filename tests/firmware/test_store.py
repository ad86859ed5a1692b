# Persistent counters: the boot counter counts every start, the seq floor only grows and survives restarts,
# a corrupt file is refused, a torn temporary file does not matter, older firmware's file still reads.
import os

from node.store import Counters, StoreError

PATH = "_test_counters.dat"


def _clean():
    for p in (PATH, PATH + ".tmp"):
        try:
            os.remove(p)
        except OSError:
            pass


def _text():
    with open(PATH) as f:
        return f.read()


def test_first_boot():
    _clean()
    c = Counters(PATH)
    assert c.boot == 1 and c.floor == 0
    assert _text() == "v1 1 0\n"  # the boot is on flash before anything else happens
    _clean()


def test_boot_counts_and_the_floor_only_grows():
    _clean()
    for boot in range(1, 5):
        c = Counters(PATH)
        assert c.boot == boot
        assert c.floor == 64 * (boot - 1)
        c.reserve(64 * boot)
        c.reserve(10)  # lower: ignored
        assert c.floor == 64 * boot
    assert _text() == "v1 4 256\n"
    _clean()


def test_boot_counter_wraps_at_16_bits():
    _clean()
    with open(PATH, "w") as f:
        f.write("v1 65535 7\n")
    c = Counters(PATH)
    assert c.boot == 0 and c.floor == 7
    _clean()


def test_corrupt_file_is_refused():
    _clean()
    for text in ("v1 garbage", "v2 1 2", "", "v1 1 x"):
        with open(PATH, "w") as f:
            f.write(text)
        try:
            Counters(PATH)
        except StoreError as exc:
            assert PATH in str(exc)
        else:
            raise AssertionError("corrupt counters accepted: %r" % text)
    _clean()


def test_leftover_tmp_file_does_not_matter():
    _clean()
    c = Counters(PATH)
    c.reserve(100)
    with open(PATH + ".tmp", "w") as f:
        f.write("v1 1")  # a torn write that never got renamed
    c = Counters(PATH)
    assert c.boot == 2 and c.floor == 100
    _clean()


def test_older_firmware_high_water_mark_reads_as_the_floor():
    _clean()
    with open(PATH, "w") as f:
        f.write("v1 3 96\n")  # reserved ahead by the old Counters.next_seq()
    c = Counters(PATH)
    assert c.boot == 4 and c.floor == 96
    _clean()
