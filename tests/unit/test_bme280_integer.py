"""The BME280 driver works the datasheet's floating-point compensation in integers, so that read()
allocates nothing on MicroPython but its result. Two things make that true, and both are checked here on
CPython over the sensor's operating range with calibrations drawn like real parts':

- accuracy: the integer working stays within 2e-6 degC, 0.002 %RH and 0.06 Pa of the float formulas
  (appendix 8.1 of the datasheet, written out below in doubles);
- size: no intermediate value reaches 2**30, so each one is a small int on a 32-bit port such as the
  ESP32's (a larger one would silently become a heap-allocated bignum there; the 64-bit Unix port, whose
  small ints have 62 bits, cannot show that). Every calibration word the driver keeps and every raw value
  is wrapped in an int type that fails on any result outside the small-int range.
"""
import random

import pytest

from fieldnode.bench.bme280_emu import DEFAULT_CALIBRATION, BME280Emulator, random_calibration
from fieldnode.bench.i2cbus import Bus
from node.sensors import bme280
from node.sensors.bme280 import BME280

ADDR = 0x76
SMALL = 1 << 30  # MicroPython's small ints on 32-bit ports: -2**30 <= v < 2**30
ERROR = (2e-6, 0.002, 0.06)  # degC, %RH, Pa


class SmallInt(int):
    """An int whose arithmetic fails as soon as a result would not be a small int on a 32-bit port."""

    def __truediv__(self, other):
        return int(self) / int(other)


def _checked(name):
    op = getattr(int, name)

    def method(self, *args):
        value = op(self, *args)
        if not -SMALL <= value < SMALL:
            raise OverflowError(f"{name} gives {value}, outside the 31-bit small-int range")
        return SmallInt(value)
    return method


for _name in ("add", "sub", "mul", "floordiv", "mod", "lshift", "rshift", "and", "or", "neg", "abs"):
    for _prefix in ("__", "__r"):
        _attr = f"{_prefix}{_name}__"
        if hasattr(int, _attr):
            setattr(SmallInt, _attr, _checked(_attr))


def float_formulas(cal, adc_t, adc_p, adc_h):
    """The datasheet's floating-point compensation (with its double-precision constants)."""
    v1 = (adc_t / 16384.0 - cal.t1 / 1024.0) * cal.t2
    v2 = (adc_t / 131072.0 - cal.t1 / 8192.0) ** 2 * cal.t3
    t_fine = int(v1 + v2)
    temperature = (v1 + v2) / 5120.0
    v1 = t_fine / 2.0 - 64000.0
    v2 = v1 * v1 * cal.p6 / 32768.0 + v1 * cal.p5 * 2.0
    v2 = v2 / 4.0 + cal.p4 * 65536.0
    v1 = (cal.p3 * v1 * v1 / 524288.0 + cal.p2 * v1) / 524288.0
    v1 = (1.0 + v1 / 32768.0) * cal.p1
    p = (1048576.0 - adc_p - v2 / 4096.0) * 6250.0 / v1
    pressure = p + (cal.p9 * p * p / 2147483648.0 + p * cal.p8 / 32768.0 + cal.p7) / 16.0
    x = t_fine - 76800.0
    h = (adc_h - (cal.h4 * 64.0 + cal.h5 / 16384.0 * x)) * (
        cal.h2 / 65536.0 * (1.0 + cal.h6 / 67108864.0 * x * (1.0 + cal.h3 / 67108864.0 * x)))
    h = h * (1.0 - cal.h1 * h / 524288.0)
    return temperature, min(max(h, 0.0), 100.0), pressure


def driver(cal):
    emu = BME280Emulator(calibration=cal, measuring_reads=0)
    bus = Bus("test")
    bus.attach(ADDR, emu)
    sensor = BME280(bus, ADDR)
    emu.stuck = True
    for name, value in vars(sensor).items():  # the calibration words it kept
        if type(value) is int:
            setattr(sensor, name, SmallInt(value))
    return emu, sensor


def cases(seed, n):
    """(calibration, adc_t, adc_p, adc_h): random, and the corners of the operating range."""
    r = random.Random(seed)
    corners = [(t, p, h) for t in (300_000, 720_000) for p in (250_000, 850_000) for h in (0, 0xFFFF)]
    for i in range(n):
        cal = DEFAULT_CALIBRATION if i == 0 else random_calibration(r.randrange(2**32))
        if i % 3 == 1:
            cal = cal._replace(h3=r.randint(1, 255))  # shipped parts have 0; the formula allows a byte
        adc = corners[i % len(corners)] if i % 4 == 0 else (
            r.randint(300_000, 720_000), r.randint(250_000, 850_000), r.randint(0, 0xFFFF))
        yield (cal,) + adc


@pytest.mark.parametrize("seed", range(4))
def test_integer_compensation_is_the_float_formula_in_small_ints(seed):
    worst = [0.0, 0.0, 0.0]
    for cal, adc_t, adc_p, adc_h in cases(seed, 400):
        emu, sensor = driver(cal)
        emu.load_adc(adc_t, adc_p, adc_h)
        bme280_read = sensor.read()  # raises OverflowError on any intermediate >= 2**30
        want = float_formulas(cal, adc_t, adc_p, adc_h)
        for i, (got, expected) in enumerate(zip(bme280_read, want)):
            assert type(got) is float
            worst[i] = max(worst[i], abs(got - expected))
            assert abs(got - expected) <= ERROR[i], (cal, (adc_t, adc_p, adc_h), bme280_read, want)
    assert worst[2] > 0, "the comparison compared nothing"


def test_the_size_check_catches_a_bignum():
    """The wrapper is not a formality: a product the datasheet's 64-bit pressure formula makes (var1 * var1 *
    p6) trips it; the helpers that split such products give the exact results."""
    x = SmallInt(300_000)
    with pytest.raises(OverflowError):
        x * x * 3
    assert bme280._mulsh(SmallInt(300_000), SmallInt(-10_685), 5) == (300_000 * -10_685) >> 5
    assert bme280._sq(SmallInt(-333_000)) == 333_000 ** 2 >> 10


def test_helpers_are_exact_over_their_range():
    r = random.Random(7)
    for _ in range(5000):
        a, b, s = r.randint(-(1 << 19), 1 << 19), r.randint(-(1 << 15), 1 << 15), r.randint(1, 15)
        assert bme280._mulsh(a, b, s) == (a * b) >> s
        assert bme280._sq(a) == (a * a) >> 10
