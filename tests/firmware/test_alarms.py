# node.alarms: hysteresis, debounce, invalid readings, jumps, and the one-event-per-crossing property.
# Plain asserts: runs under pytest (CPython) and on the Unix port (mpyunit.py).
from node.alarms import HIGH, RAISED, AlarmSet

T = {"low": 2.0, "high": 8.0, "hysteresis": 0.5, "debounce": 1}


def feed(alarms, samples, channel=0):
    """Feed values for one channel (others None); return all events, copied out of the reused list."""
    out = []
    for v in samples:
        values = [None, None, None]
        values[channel] = v
        out.extend(alarms.update(values))
    return out


def test_constants():
    assert RAISED == 1 and HIGH == 2


def test_no_limits_never_alarm():
    for thresholds in ({}, None, {"temperature_c": {}}, {"humidity_rh": {"hysteresis": 1, "debounce": 2}}):
        a = AlarmSet(thresholds)
        for values in ((-300.0, 0.0, 0), (1e9, 100.0, 200000), (None, None, None), (0.0, 50.0, 101325)):
            assert a.update(values) == []
        assert a.bits == 0


def test_high_raises_once_and_clears_below_hysteresis():
    a = AlarmSet({"temperature_c": T})
    assert feed(a, [7.0, 8.0]) == []  # at the limit is not above it
    assert feed(a, [8.1]) == [(0, RAISED | HIGH, 8.1, 8.0)]
    assert a.bits == 0b10
    assert feed(a, [9.0, 12.0, 7.9, 7.5]) == []  # still above high - hysteresis (7.5 is not below it)
    assert a.bits == 0b10
    assert feed(a, [7.4]) == [(0, HIGH, 7.4, 8.0)]
    assert a.bits == 0
    assert feed(a, [7.9, 8.0, 5.0]) == []


def test_low_raises_once_and_clears_above_hysteresis():
    a = AlarmSet({"temperature_c": T})
    assert feed(a, [2.0]) == []
    assert feed(a, [1.9]) == [(0, RAISED, 1.9, 2.0)]
    assert a.bits == 0b01
    assert feed(a, [-10.0, 2.1, 2.5]) == []
    assert feed(a, [2.6]) == [(0, 0, 2.6, 2.0)]
    assert a.bits == 0


def test_debounce_needs_consecutive_samples_both_ways():
    a = AlarmSet({"temperature_c": dict(T, debounce=3)})
    assert feed(a, [9.0, 9.0, 7.0, 9.0, 9.0]) == []  # the dip restarts the count
    assert feed(a, [9.0]) == [(0, RAISED | HIGH, 9.0, 8.0)]
    assert feed(a, [7.0, 7.0, 7.8, 7.0, 7.0]) == []  # 7.8 is inside the hysteresis band: restarts
    assert a.bits == 0b10
    assert feed(a, [7.0]) == [(0, HIGH, 7.0, 8.0)]
    assert a.bits == 0


def test_none_leaves_counters_and_state_alone():
    a = AlarmSet({"temperature_c": dict(T, debounce=3)})
    assert feed(a, [9.0, None, 9.0, None, None]) == []
    assert feed(a, [9.0]) == [(0, RAISED | HIGH, 9.0, 8.0)]
    assert feed(a, [None] * 10) == []
    assert a.bits == 0b10
    assert feed(a, [1.0, None, 7.0, None]) == []
    assert feed(a, [7.0]) == [(0, HIGH, 7.0, 8.0)]


def test_events_list_is_reused_and_cleared():
    a = AlarmSet({"temperature_c": T})
    first = a.update((9.0, None, None))
    assert first == [(0, RAISED | HIGH, 9.0, 8.0)]
    second = a.update((9.0, None, None))
    assert second is first and second == []


def test_jump_from_high_to_low_clears_then_raises():
    a = AlarmSet({"temperature_c": T})
    feed(a, [9.0])
    assert feed(a, [1.0]) == [(0, HIGH, 1.0, 8.0), (0, RAISED, 1.0, 2.0)]
    assert a.bits == 0b01
    assert feed(a, [9.0]) == [(0, 0, 9.0, 2.0), (0, RAISED | HIGH, 9.0, 8.0)]
    assert a.bits == 0b10


def test_jump_with_debounce_waits_for_both():
    a = AlarmSet({"temperature_c": dict(T, debounce=3)})
    feed(a, [9.0, 9.0, 9.0])
    assert a.bits == 0b10
    assert feed(a, [1.0, 1.0]) == []  # a one- or two-sample glitch changes nothing
    assert a.bits == 0b10
    assert feed(a, [1.0]) == [(0, HIGH, 1.0, 8.0), (0, RAISED, 1.0, 2.0)]
    assert a.bits == 0b01


def test_channels_have_their_own_bits():
    a = AlarmSet({
        "temperature_c": T,
        "humidity_rh": {"low": 20.0, "high": 80.0},
        "pressure_pa": {"low": 95000, "high": 105000, "hysteresis": 100},
    })
    assert a.update((9.0, 10.0, 106000)) == [
        (0, RAISED | HIGH, 9.0, 8.0), (1, RAISED, 10.0, 20.0), (2, RAISED | HIGH, 106000, 105000)]
    assert a.bits == (1 << 1) | (1 << 2) | (1 << 5)
    assert a.update((None, 90.0, 104950)) == [(1, 0, 90.0, 20.0), (1, RAISED | HIGH, 90.0, 80.0)]
    assert a.bits == (1 << 1) | (1 << 3) | (1 << 5)
    assert a.update((5.0, 50.0, 104899)) == [(0, HIGH, 5.0, 8.0), (1, HIGH, 50.0, 80.0), (2, HIGH, 104899, 105000)]
    assert a.bits == 0


def test_only_one_limit_configured():
    a = AlarmSet({"pressure_pa": {"high": 105000, "debounce": 2}})
    assert feed(a, [-1e9, -1e9, 0], channel=2) == []
    assert feed(a, [105001, 105001], channel=2) == [(2, RAISED | HIGH, 105001, 105000)]
    assert feed(a, [105000, 105000], channel=2) == []  # no hysteresis: clears only below the limit
    assert feed(a, [104999, 104999], channel=2) == [(2, HIGH, 104999, 105000)]
    a = AlarmSet({"humidity_rh": {"low": 10.0}})
    assert feed(a, [100.0, 1000.0], channel=1) == []
    assert feed(a, [9.0], channel=1) == [(1, RAISED, 9.0, 10.0)]


class Prng:
    """xorshift32: the same sequence on CPython and MicroPython (their `random` modules differ)."""

    def __init__(self, seed):
        self.state = seed

    def next(self):
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def uniform(self, lo, hi):
        return lo + (hi - lo) * (self.next() / 4294967296)


# (limits, walk bounds, step, chance of a jump to anywhere in bounds)
WALK = (
    ({"low": 2.0, "high": 8.0, "hysteresis": 0.5, "debounce": 3}, (-5.0, 15.0), 0.6, 0.01),
    ({"low": 20.0, "high": 80.0, "hysteresis": 2.0, "debounce": 1}, (0.0, 100.0), 5.0, 0.05),
    # A hysteresis wider than the gap between the limits (config rejects it; the logic must stay sane).
    ({"low": 100000.0, "high": 100500.0, "hysteresis": 1000.0, "debounce": 2}, (98000.0, 103000.0), 400.0, 0.02),
)


def raise_holds(spec, side, v):
    return v > spec["high"] if side else v < spec["low"]


def clear_holds(spec, side, v):
    if side:
        return v < spec["high"] - spec["hysteresis"] or v < spec["low"]
    return v > spec["low"] + spec["hysteresis"] or v > spec["high"]


def test_random_walk_one_event_per_crossing():
    names = ("temperature_c", "humidity_rh", "pressure_pa")
    a = AlarmSet({names[c]: WALK[c][0] for c in range(3)})
    rng = Prng(0x2545F491)
    value = [5.0, 50.0, 100250.0]
    history = [[], [], []]  # valid samples per channel, newest last
    active = [[False, False], [False, False], [False, False]]  # per channel: [low, high]
    counts = {}
    for _ in range(4000):
        sample = [None, None, None]
        for c in range(3):
            spec, (lo, hi), step, jump = WALK[c]
            if rng.uniform(0, 1) < jump:
                value[c] = rng.uniform(lo, hi)
            else:
                value[c] = min(hi, max(lo, value[c] + rng.uniform(-step, step)))
            if rng.uniform(0, 1) >= 0.1:  # one reading in ten is invalid
                sample[c] = value[c]
                history[c].append(value[c])
                del history[c][:-4]
        events = a.update(sample)
        for channel, transition, v, limit in events:
            spec, n = WALK[channel][0], WALK[channel][0]["debounce"]
            side = 1 if transition & HIGH else 0
            raised = bool(transition & RAISED)
            assert sample[channel] == v
            assert limit == (spec["high"] if side else spec["low"])
            assert active[channel][side] != raised, "a transition must change the state"
            holds = raise_holds if raised else clear_holds
            assert all(holds(spec, side, x) for x in history[channel][-n:]), "debounce not honoured"
            active[channel][side] = raised
            key = (channel, side, raised)
            counts[key] = counts.get(key, 0) + 1
        bits = 0
        for c in range(3):
            spec, n = WALK[c][0], WALK[c][0]["debounce"]
            assert not (active[c][0] and active[c][1]), "low and high active together"
            for side in (0, 1):
                if active[c][side]:
                    bits |= 1 << (2 * c + side)
                recent = history[c][-n:]
                if len(recent) == n and all(raise_holds(spec, side, x) for x in recent):
                    assert active[c][side], "condition held for the debounce but no alarm"
                if len(recent) == n and all(clear_holds(spec, side, x) for x in recent):
                    assert not active[c][side], "clear condition held for the debounce but alarm stayed"
        assert a.bits == bits
    for c in range(3):
        for side in (0, 1):
            raises, clears = counts.get((c, side, True), 0), counts.get((c, side, False), 0)
            assert raises >= 5, (c, side, raises)  # the walk really exercised this limit
            assert raises - clears in (0, 1)
