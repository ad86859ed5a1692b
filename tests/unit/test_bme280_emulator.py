"""The register-level BME280 emulator, read through our driver on an in-process bench Bus."""
import errno
import random
import threading

import pytest

from fieldnode.bench.bme280_emu import (DEFAULT_CALIBRATION, BME280Emulator, Calibration, pack_calibration,
                                        pressure_q24_8, random_calibration, t_fine, unpack_calibration)
from fieldnode.bench.i2cbus import Bus, Nack
from node.sensors.bme280 import BME280

ADDR = 0x76


def rig(**emu_kwargs):
    emu = BME280Emulator(**emu_kwargs)
    bus = Bus("test")
    bus.attach(ADDR, emu)
    return emu, bus


def tolerance(osrs_p=16):
    """Readback tolerance: T and H within the integer formulas' output steps, P within half a raw step."""
    bits = 15 + {1: 1, 2: 2, 4: 3, 8: 4, 16: 5}[osrs_p]
    return 0.01, 0.02, 0.25 * 2 ** (20 - bits) / 2 + 0.1


def assert_reads(reading, env, tol):
    for name, got, want, t in zip(("temperature", "humidity", "pressure"), reading, env, tol):
        assert abs(got - want) <= t, f"{name}: read {got!r}, set {want!r} (reading {reading}, set {env})"


def test_datasheet_example_integer_compensation():
    # The datasheet's worked example: adc_T 519888 -> t_fine 128422 -> 25.08 degC.
    fine = t_fine(DEFAULT_CALIBRATION, 519888)
    assert fine == 128422
    assert (fine * 5 + 128) >> 8 == 2508
    assert abs(pressure_q24_8(DEFAULT_CALIBRATION, fine, 415148) / 256 - 100653.27) < 0.05


def test_calibration_round_trips_through_registers():
    for cal in [DEFAULT_CALIBRATION] + [random_calibration(s) for s in range(50)]:
        assert unpack_calibration(pack_calibration(cal)) == cal
    emu = BME280Emulator(calibration=random_calibration(3)._replace(h4=300, h5=-20, h6=-3))
    raw = emu.read_register(0x88, 26) + emu.read_register(0xE1, 7)
    assert unpack_calibration(raw) == emu.calibration
    assert isinstance(emu.calibration, Calibration)
    with pytest.raises(ValueError):
        unpack_calibration(b"\x00" * 32)


def test_reads_back_the_environment_over_a_grid():
    emu, bus = rig()
    sensor = BME280(bus, ADDR)
    for t in (-40.0, -10.5, 0.0, 21.0, 49.99, 85.0):
        for h in (0.0, 0.5, 33.3, 50.0, 99.5, 100.0):
            for p in (30000.0, 70000.0, 101325.0, 110000.0):
                emu.set_environment(temperature_c=t, humidity_rh=h, pressure_pa=p)
                assert_reads(sensor.read(), (t, h, p), tolerance())


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("osrs", [1, 16])
def test_reads_back_random_environments_with_random_calibrations(seed, osrs):
    rnd = random.Random(seed)
    emu, bus = rig(calibration=seed, measuring_reads=rnd.randint(0, 3))
    sensor = BME280(bus, ADDR, osrs_t=osrs, osrs_h=osrs, osrs_p=osrs)
    for _ in range(15):
        env = (rnd.uniform(-40, 85), rnd.uniform(0, 100), rnd.uniform(30000, 110000))
        emu.set_environment(*env)
        assert_reads(sensor.read(), env, tolerance(osrs))


def test_pressure_resolution_follows_oversampling():
    emu, bus = rig()
    BME280(bus, ADDR, osrs_p=1, osrs_t=1).read()
    adc_t, adc_p, _ = emu.adc
    assert adc_t % 16 == 0 and adc_p % 16 == 0, emu.adc  # 16-bit results at x1
    lsbs = set()
    for i in range(40):
        emu.set_environment(pressure_pa=100000.0 + i * 0.37)
        BME280(bus, ADDR, osrs_p=16).read()
        lsbs.add(emu.adc[1] & 0x0F)
    assert len(lsbs) > 4, lsbs  # 20-bit results at x16


def test_iir_filter_smooths_steps():
    emu, bus = rig(temperature_c=20.0)
    sensor = BME280(bus, ADDR, iir=16)
    assert abs(sensor.read()[0] - 20.0) < 0.01  # the first sample seeds the filter
    emu.set_environment(temperature_c=30.0)
    readings = [sensor.read()[0] for _ in range(100)]
    assert 20.2 < readings[0] < 21.5, readings[0]  # 1/16 of the step
    assert all(a < b for a, b in zip(readings, readings[1:40])), readings
    assert abs(readings[-1] - 30.0) < 0.05, readings[-1]


def test_environment_outside_the_sensor_range_is_refused():
    emu = BME280Emulator()
    for kwargs in ({"humidity_rh": 100.5}, {"humidity_rh": -1}, {"temperature_c": 500.0},
                   {"pressure_pa": 1e7}):
        with pytest.raises(ValueError):
            emu.set_environment(**kwargs)
    assert emu.environment == (21.0, 45.0, 101325.0)


def test_wrong_chip_id_raises_oserror_naming_address_and_id():
    emu, bus = rig(chip_id=0x58)  # a BMP280
    with pytest.raises(OSError) as info:
        BME280(bus, ADDR)
    assert "0x76" in str(info.value) and "0x58" in str(info.value)
    emu.chip_id = 0x60
    assert BME280(bus, ADDR).chip_id == 0x60


def test_nack_raises_oserror_enodev():
    emu, bus = rig()
    sensor = BME280(bus, ADDR)
    emu.nack = True
    with pytest.raises(OSError) as info:
        sensor.read()
    assert info.value.errno == errno.ENODEV
    with pytest.raises(Nack):
        emu.read_register(0xD0, 1)
    with pytest.raises(OSError) as info:
        BME280(bus, 0x77)  # nothing there
    assert info.value.errno == errno.ENODEV
    emu.nack = False
    assert len(sensor.read()) == 3


def test_stall_makes_read_time_out():
    emu, bus = rig()
    sensor = BME280(bus, ADDR)
    emu.stall = True
    with pytest.raises(OSError) as info:
        sensor.read()
    assert info.value.errno == errno.ETIMEDOUT and "0x76" in str(info.value)
    emu.stall = False
    emu.set_environment(temperature_c=30.0)
    assert abs(sensor.read()[0] - 30.0) < 0.01  # a new conversion recovers


def test_stuck_adc_freezes_the_sample():
    emu, bus = rig(temperature_c=10.0)
    sensor = BME280(bus, ADDR)
    assert abs(sensor.read()[0] - 10.0) < 0.01
    emu.stuck = True
    emu.set_environment(temperature_c=40.0)
    assert abs(sensor.read()[0] - 10.0) < 0.01
    assert emu.conversions == 2  # conversions still ran
    emu.stuck = False
    assert abs(sensor.read()[0] - 40.0) < 0.01


def test_forced_mode_status_and_data_shadowing():
    emu = BME280Emulator(temperature_c=25.0, measuring_reads=2)
    assert emu.read_register(0xF3, 1) == b"\x01"  # im_update right after power-on
    assert emu.read_register(0xF3, 1) == b"\x00"
    assert emu.adc == (0x80000, 0x80000, 0x8000)  # reset values
    emu.write_register(0xF2, b"\x01")
    emu.write_register(0xF4, bytes((0b010_101_01,)))  # T x2, P x16, forced
    assert emu.read_register(0xF4, 1)[0] & 0x03 == 0x01
    assert emu.read_register(0xF3, 1) == b"\x08"
    assert emu.adc == (0x80000, 0x80000, 0x8000)  # data registers update only at the end
    assert emu.read_register(0xF3, 1) == b"\x08"
    assert emu.read_register(0xF3, 1) == b"\x00"
    assert emu.read_register(0xF4, 1)[0] & 0x03 == 0x00  # back to sleep
    assert emu.conversions == 1
    assert 0x80000 not in emu.adc[:2] and emu.adc[2] != 0x8000


def test_humidity_oversampling_latches_on_ctrl_meas_write():
    emu = BME280Emulator(measuring_reads=0)
    emu.write_register(0xF2, b"\x00")  # humidity skipped
    emu.write_register(0xF4, bytes((0b001_000_01,)))  # T x1, P skipped, forced
    adc_t, adc_p, adc_h = emu.adc
    assert adc_p == 0x80000 and adc_h == 0x8000 and adc_t != 0x80000
    assert emu.read_register(0xFD, 2) == b"\x80\x00"
    emu.write_register(0xF2, b"\x01")  # takes effect with the next ctrl_meas write, and starts nothing
    emu.write_register(0xF5, b"\x00")
    assert emu.conversions == 1 and emu.adc[2] == 0x8000
    emu.write_register(0xF4, bytes((0b001_001_01,)))
    assert emu.conversions == 2
    assert emu.adc[1] != 0x80000 and emu.adc[2] != 0x8000


def test_writes_take_register_value_pairs_and_reset_restores_defaults():
    emu = BME280Emulator(measuring_reads=0)
    assert emu.read_register(0xF3, 1) == b"\x01"  # the NVM copy after power-on
    emu.write_register(0xF2, bytes((0x03, 0xF5, 0x10, 0xF4, 0x55)))
    assert emu.read_register(0xF2, 4) == bytes((0x03, 0x00, 0x54, 0x10))  # converted, back to sleep
    assert emu.conversions == 1
    emu.write_register(0xD0, b"\x12")  # read-only
    emu.write_register(0x88, b"\x00")
    assert emu.chip_id == 0x60 and emu.read_register(0x88, 2) == pack_calibration(DEFAULT_CALIBRATION)[:2]
    emu.write_register(0xE0, b"\x01")  # not the reset word
    assert emu.read_register(0xF2, 1) == b"\x03"
    emu.write_register(0xE0, b"\xb6")
    assert emu.read_register(0xF2, 4) == b"\x00\x01\x00\x00"  # im_update while the NVM is copied
    assert emu.adc == (0x80000, 0x80000, 0x8000)
    assert emu.read_register(0xE0, 1) == b"\x00"


def test_environment_changes_from_another_thread_are_safe():
    emu, bus = rig()
    sensor = BME280(bus, ADDR)
    envs = ((10.0, 20.0, 90000.0), (30.0, 80.0, 100000.0))
    stop = threading.Event()
    errors = []
    changes = [0]

    def bench():
        try:
            while not stop.is_set():
                for env in envs:
                    emu.set_environment(*env)
                    changes[0] += 1
        except Exception as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=bench)
    thread.start()
    try:
        for _ in range(25):
            reading = sensor.read()
            # one sample of one environment: never channels (or register bytes) from two different ones
            assert any(all(abs(r - e) <= t for r, e, t in zip(reading, env, tolerance())) for env in envs), reading
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and not errors, errors
    assert changes[0] > 2, "the bench thread never ran during the reads"
