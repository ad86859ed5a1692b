"""Sensor health on a virtual node with the emulated BME280: a bus that NACKs, an ADC that stops converting
(stuck), values outside the sensor's range and a jump no room makes. Each gives flagged readings that carry
no number for what is wrong, a console line and a status-topic change; the node keeps running and
recovers by itself when the part does."""
import pytest

from fieldnode.bench.rig import Rig

from link_helpers import ENV, Deliveries, start_node

STUCK_SAMPLES = 5  # node/health.py

TOL = {"temperature_c": 0.02, "humidity_rh": 0.05, "pressure_pa": 1.0}
CHANNELS = tuple(TOL)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("sh"), ["sh-1"], interval_s=0.2, environment=ENV, autostart=[])
    with r:
        yield r


@pytest.fixture(scope="module")
def seen(rig):
    d = Deliveries()
    with rig.monitor(**d.callbacks()):
        node = start_node(rig, "sh-1")
        try:
            d.wait_more("sh-1", 3)
            yield d
        finally:
            node.stop()


def after(d, seq, pred, what, timeout=20.0):
    """The first reading of sh-1 after `seq` for which pred(fields) holds (bounded wait)."""
    return d.wait_for(lambda c: next((m.as_dict() for m in c.readings("sh-1") if m.seq > seq
                                      and pred(m.as_dict())), None), timeout, what)


def last_seq(d):
    return max(d.seqs("sh-1"))


def flagged(flag):
    return lambda r: flag in r["sensor_status"]


def healthy(env):
    return lambda r: not r["sensor_status"] and all(
        r[k] is not None and abs(r[k] - v) <= TOL[k] for k, v in env.items())


def status_after(d, count, pred, what):
    return d.wait_for(lambda c: next((s for n, s in c.statuses[count:] if n == "sh-1" and pred(s)), None), 20,
                      what)


def test_a_stuck_adc_is_flagged_without_numbers_and_recovers(rig, seen):
    sensor, node = rig.sensors["sh-1"], rig.nodes["sh-1"]
    mark, statuses, start = len(node.lines), len(seen.statuses), last_seq(seen)
    sensor.stuck = True  # conversions leave the data registers as they are
    bad = after(seen, start, flagged("stuck_value"), "a reading flagged stuck")
    assert all(bad[k] is None for k in CHANNELS), bad
    # until STUCK_SAMPLES identical samples are in, the frozen values (the last real ones) still go out
    assert bad["seq"] - start <= STUCK_SAMPLES + 2
    node.wait_for_line(r"sensor status 4: stuck value", start=mark)
    status_after(seen, statuses, lambda s: s == "online sensor=4", "the status topic saying sensor=4")
    sensor.stuck = False
    cleared = last_seq(seen)
    good = after(seen, cleared, healthy(ENV), "recovery")
    status_after(seen, statuses, lambda s: s == "online", "the status topic back to online")
    assert good["seq"] - cleared <= 3


def test_a_steady_room_is_not_taken_for_a_stuck_sensor(rig, seen):
    # the emulator is noiseless: in a steady environment every raw sample is the same, as with a stuck ADC;
    # the reset probe tells them apart
    start = last_seq(seen)
    seen.wait_for(lambda c: [m for m in c.readings("sh-1") if m.seq > start][20:], 30, "20 steady readings")
    steady = [m.as_dict() for m in seen.readings("sh-1") if m.seq > start]
    assert all(healthy(ENV)(r) for r in steady), [r for r in steady if not healthy(ENV)(r)][:3]


def test_values_outside_the_sensor_range_are_refused_per_channel(rig, seen):
    sensor, node = rig.sensors["sh-1"], rig.nodes["sh-1"]
    mark = len(node.lines)
    sensor.set_environment(temperature_c=90.0)  # a BME280 works from -40 to 85 °C
    bad = after(seen, last_seq(seen), flagged("implausible_value"), "a reading flagged implausible")
    assert bad["temperature_c"] is None
    assert abs(bad["humidity_rh"] - 45.0) <= TOL["humidity_rh"] and abs(bad["pressure_pa"] - 101325.0) <= 1.0
    node.wait_for_line(r"sensor status 8: implausible value", start=mark)
    more = after(seen, bad["seq"] + 3, flagged("implausible_value"), "still refused while out of range")
    assert more["temperature_c"] is None
    sensor.set_environment(temperature_c=ENV["temperature_c"])
    after(seen, more["seq"], healthy(ENV), "recovery")


def test_a_jump_no_room_makes_costs_one_reading_then_the_new_value_counts(rig, seen):
    sensor = rig.sensors["sh-1"]
    start = last_seq(seen)
    sensor.set_environment(temperature_c=60.0)  # in range, but 40 °C at once
    bad = after(seen, start, flagged("implausible_value"), "the jump refused")
    assert bad["temperature_c"] is None and bad["humidity_rh"] is not None
    new = dict(ENV, temperature_c=60.0)
    good = after(seen, bad["seq"], healthy(new), "the new temperature accepted")
    assert good["seq"] == bad["seq"] + 1
    sensor.set_environment(temperature_c=ENV["temperature_c"])
    after(seen, good["seq"], healthy(ENV), "back")


def test_a_bus_that_stops_answering_gives_read_errors_then_recovers(rig, seen):
    sensor, node = rig.sensors["sh-1"], rig.nodes["sh-1"]
    statuses = len(seen.statuses)
    sensor.nack = True
    bad = after(seen, last_seq(seen), flagged("read_error"), "a reading flagged read_error")
    assert all(bad[k] is None for k in CHANNELS), bad
    status_after(seen, statuses, lambda s: s == "online sensor=1", "the status topic saying sensor=1")
    more = after(seen, bad["seq"] + 3, flagged("read_error"), "readings keep coming, flagged")
    sensor.nack = False
    after(seen, more["seq"], healthy(ENV), "recovery")
    assert node.running
