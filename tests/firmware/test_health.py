# node.health: ranges, the rate check, the repeat count behind the stuck detection, the reset probe.
# Plain asserts: runs under pytest (CPython) and on the Unix port (mpyunit.py).
from node.health import (IMPLAUSIBLE, READ_ERROR, STUCK, STUCK_SAMPLES, WRONG_CHIP, Health, conversion_stuck,
                         describe)

OK = (21.5, 45.0, 101325.0)


def judge(h, sample, now_ms):
    out = [0, 0, 0]
    return h.judge(sample, now_ms, out), out


def test_values_in_range_pass_unchanged():
    h = Health()
    status, out = judge(h, OK, 0)
    assert status == 0 and out == list(OK)


def test_each_channel_out_of_range_is_refused_alone():
    for sample, bad in (((-40.5, 45.0, 101325.0), 0), ((85.2, 45.0, 101325.0), 0), ((21.0, 100.5, 101325.0), 1),
                        ((21.0, -0.1, 101325.0), 1), ((21.0, 45.0, 29999.0), 2), ((21.0, 45.0, 110001.0), 2),
                        ((float("nan"), 45.0, 101325.0), 0), ((21.0, 45.0, float("inf")), 2)):
        status, out = judge(Health(), sample, 0)
        assert status == IMPLAUSIBLE, sample
        assert out[bad] is None, sample
        assert all(out[c] == sample[c] for c in range(3) if c != bad), sample
    status, out = judge(Health(), (-40.0, 0.0, 30000.0), 0)  # the limits themselves are in range
    assert status == 0


def test_a_jump_faster_than_plausible_is_refused_once():
    h = Health()
    judge(h, OK, 0)
    status, out = judge(h, (31.5, 45.0, 101325.0), 1000)  # +10 °C in one second
    assert status == IMPLAUSIBLE and out[0] is None and out[1] == 45.0 and out[2] == 101325.0
    status, out = judge(h, (31.5, 45.0, 101325.0), 2000)  # it stayed: a real step, accepted now
    assert status == 0 and out[0] == 31.5


def test_the_rate_scales_with_time_but_not_below_one_second():
    h = Health()
    judge(h, OK, 0)
    status, _ = judge(h, (21.5 + 2.9, 45.0, 101325.0), 200)  # 0.2 s later, judged as 1 s: 2.9 < 3
    assert status == 0
    status, _ = judge(h, (21.5 + 2.9 + 25.0, 45.0, 101325.0), 10200)  # 10 s later: 25 < 30
    assert status == 0
    status, out = judge(h, (49.4, 45.0, 101325.0 + 400), 11200)  # pressure 400 Pa in 1 s
    assert status == IMPLAUSIBLE and out[2] is None and out[0] == 49.4


def test_reset_forgets_the_reference():
    h = Health()
    judge(h, OK, 0)
    h.reset()
    status, _ = judge(h, (60.0, 45.0, 101325.0), 100)
    assert status == 0


def test_repeats_counts_identical_samples():
    h = Health()
    counts = [h.repeats(s) for s in (OK, OK, OK, (21.51, 45.0, 101325.0), OK, OK)]
    assert counts == [1, 2, 3, 1, 1, 2]
    for _ in range(STUCK_SAMPLES):
        n = h.repeats(OK)
    assert n == STUCK_SAMPLES + 2
    h.reset()
    assert h.repeats(OK) == 1


class FakeBus:
    def __init__(self, data):
        self.data = data
        self.reads = []

    def readfrom_mem_into(self, addr, reg, buf):
        self.reads.append((addr, reg, len(buf)))
        buf[:] = self.data


def test_conversion_stuck_reads_the_data_registers():
    buf = bytearray(8)
    bus = FakeBus(b"\x80\x00\x00\x80\x00\x00\x80\x00")
    assert conversion_stuck(bus, 0x76, buf)
    assert bus.reads == [(0x76, 0xF7, 8)]
    assert not conversion_stuck(FakeBus(b"\x65\x5a\xc0\x7e\xed\x00\x66\x3d"), 0x76, buf)


def test_describe():
    assert describe(0) == "ok"
    assert describe(READ_ERROR) == "read error"
    assert describe(STUCK | IMPLAUSIBLE) == "stuck value, implausible value"
    assert describe(WRONG_CHIP) == "wrong chip id"
