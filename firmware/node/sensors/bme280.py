# Bosch BME280 (temperature, humidity, pressure) on any object with machine.I2C's memory methods:
# readfrom_mem_into(addr, reg, buf), readfrom_mem(addr, reg, n), writeto_mem(addr, reg, buf).
#
# Every read() is one forced-mode conversion and one burst read of 0xF7..0xFE, so T, H and P come from the
# same sample. Compensation follows the datasheet's floating-point formulas (appendix 8.1), worked in
# integers: every float operation allocates on MicroPython, so read() allocates nothing but its result.
# Each intermediate stays below 2**30 (a small int on 32-bit ports, so no bignum either) for sensors in their
# operating range; products that would not are split (_mulsh, _sq). The results are within 2e-6 degC,
# 0.002 %RH and 0.06 Pa of the float formulas (tests/unit/test_bme280_integer.py measures it). For humidity
# these formulas differ from Bosch's C API (and Adafruit's port of it) when dig_H3 != 0; they agree with the
# datasheet's integer formulas, which fieldnode.bench.bme280_emu implements.
# Oversampling and the IIR filter are given as factors, as the datasheet names them:
# osrs_* in (1, 2, 4, 8, 16) and iir in (0 = off, 2, 4, 8, 16). Skipping a channel is not supported.
#
# Each read() writes ctrl_hum, config and ctrl_meas again in one I2C write (the BME280 takes register/value
# pairs), so a sensor that reset itself (brown-out) is configured again by the next read.
#
# Limitations: forced mode only; on ports with single-precision floats (ESP32) the returned pressure carries
# float32 rounding (about 0.004 Pa) on top of the sensor's own noise.
import struct
import time

from micropython import const

try:
    from errno import EIO, ETIMEDOUT
except ImportError:  # pragma: no cover - every supported port has errno
    EIO, ETIMEDOUT = 5, 110

try:
    _sleep_ms = time.sleep_ms
except AttributeError:  # CPython (unit tests)
    def _sleep_ms(ms):
        time.sleep(ms / 1000)

CHIP_ID = const(0x60)
_REG_CALIB_TP = const(0x88)  # 0x88..0xA1: T1..T3, P1..P9, (reserved), H1
_REG_CHIP_ID = const(0xD0)
_REG_RESET = const(0xE0)
_REG_CALIB_H = const(0xE1)  # 0xE1..0xE7: H2..H6
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_CONFIG = const(0xF5)
_REG_DATA = const(0xF7)  # 0xF7..0xFE: press[3], temp[3], hum[2]
_RESET_WORD = const(0xB6)
_STATUS_MEASURING = const(0x08)
_STATUS_IM_UPDATE = const(0x01)
_MODE_SLEEP = const(0)
_MODE_FORCED = const(1)
_RESET_POLLS = const(20)  # 1 ms apart; the NVM copy takes ~2 ms

# factor -> register code
_OVERSAMPLING = {1: 1, 2: 2, 4: 3, 8: 4, 16: 5}
_FILTER = {0: 0, 2: 1, 4: 2, 8: 3, 16: 4}


class WrongChipError(OSError):
    """Something answers at the address, but it is not a BME280 (e.g. a BMP280 fitted by mistake)."""


def _code(table, value, name):
    try:
        return table[value]
    except (KeyError, TypeError):
        raise ValueError("%s must be one of %s, not %r" % (name, sorted(table), value))


class BME280:
    def __init__(self, i2c, address=0x76, osrs_t=2, osrs_h=1, osrs_p=16, iir=0):
        ct = _code(_OVERSAMPLING, osrs_t, "osrs_t")
        ch = _code(_OVERSAMPLING, osrs_h, "osrs_h")
        cp = _code(_OVERSAMPLING, osrs_p, "osrs_p")
        cf = _code(_FILTER, iir, "iir")
        self._i2c = i2c
        self.address = address
        self._one = bytearray(1)
        self._data = bytearray(8)
        # ctrl_hum, then config and ctrl_meas as register/value pairs: one write configures and triggers.
        self._start = bytearray((ch, _REG_CONFIG, cf << 2, _REG_CTRL_MEAS, ct << 5 | cp << 2 | _MODE_FORCED))
        # Datasheet max conversion time (ms): 1.25 + 2.3*T + 2.3*P + 0.575 + 2.3*H + 0.575; poll 1 ms apart.
        self._max_polls = (1250 + 2300 * (osrs_t + osrs_p + osrs_h) + 1150) // 1000 + 10

        self.chip_id = self._read_u8(_REG_CHIP_ID)
        if self.chip_id != CHIP_ID:
            raise WrongChipError(EIO, "bme280 at 0x%02x: chip id 0x%02x, expected 0x%02x" % (address, self.chip_id, CHIP_ID))
        i2c.writeto_mem(address, _REG_RESET, bytes((_RESET_WORD,)))
        _sleep_ms(2)
        self._wait(_STATUS_IM_UPDATE, _RESET_POLLS, "NVM copy after reset")

        tp = i2c.readfrom_mem(address, _REG_CALIB_TP, 26)
        h = i2c.readfrom_mem(address, _REG_CALIB_H, 7)
        t1, self._t2, self._t3, p1, self._p2, self._p3, p4, self._p5, self._p6, p7, self._p8, \
            self._p9 = struct.unpack_from("<HhhHhhhhhhhh", tp)
        self._h1 = tp[25]
        h2, h3, e4, e5, e6, h6 = struct.unpack("<hBbBbb", h)
        h4 = e4 * 16 + (e5 & 0x0F)  # e4, e6 are signed: H4, H5 are signed 12-bit
        h5 = e6 * 16 + (e5 >> 4)
        # Kept as the integer formulas use them (an object with more than 29 attributes takes a larger block).
        self._t1_16 = t1 << 4
        self._p1_4096 = p1 << 12
        self._p1h = p1 >> 8
        self._p1l = p1 & 0xFF
        self._p4_4096 = p4 << 12
        self._p7_16 = p7 << 4
        self._h4_16384 = h4 << 14
        self._h2, self._h3, self._h5, self._h6 = h2, h3, h5, h6

        # Sleep mode; ctrl_hum only takes effect with the ctrl_meas write that follows it.
        i2c.writeto_mem(address, _REG_CTRL_HUM, self._start[0:1])
        i2c.writeto_mem(address, _REG_CONFIG, self._start[2:3])
        i2c.writeto_mem(address, _REG_CTRL_MEAS, bytes((self._start[4] & 0xFC | _MODE_SLEEP,)))

    def _read_u8(self, reg):
        self._i2c.readfrom_mem_into(self.address, reg, self._one)
        return self._one[0]

    def _wait(self, bit, polls, what):
        for _ in range(polls):
            if not self._read_u8(_REG_STATUS) & bit:
                return
            _sleep_ms(1)
        raise OSError(ETIMEDOUT, "bme280 at 0x%02x: %s not finished after %d polls" % (self.address, what, polls))

    def read(self):
        """One forced conversion -> (temperature_c, humidity_rh, pressure_pa) as floats."""
        self._i2c.writeto_mem(self.address, _REG_CTRL_HUM, self._start)
        _sleep_ms(1)
        self._wait(_STATUS_MEASURING, self._max_polls, "conversion")
        d = self._data
        self._i2c.readfrom_mem_into(self.address, _REG_DATA, d)
        adc_p = d[0] << 12 | d[1] << 4 | d[2] >> 4
        adc_t = d[3] << 12 | d[4] << 4 | d[5] >> 4
        adc_h = d[6] << 8 | d[7]

        # Temperature: x = dt * t2 / 2**14 + dt**2 * t3 / 2**34 degC * 5120, kept as x8 = x * 256. t_fine is
        # x8 / 256 truncated towards zero, as the datasheet's int() does; x8 itself was floored, so t_fine can
        # be 1 below the float formula's (a few cases in a thousand, 0.0002 degC: within the tests' limits).
        dt = adc_t - self._t1_16
        x8 = _mulsh(dt, self._t2, 6) + _mulsh(_sq(dt), self._t3, 16)
        t_fine = x8 >> 8 if x8 >= 0 else -(-x8 >> 8)

        # Pressure: p0 = (2**20 - adc_p - b) * 6250 / d, then a second-order correction. x is t_fine - 128000
        # (the datasheet's var1 is half of it); b comes as b * 256, d as d * 4096 then * 256.
        x = t_fine - 128000
        xx = _sq(x)
        n = ((1048576 - adc_p) << 8) - (_mulsh(xx, self._p6, 13) + _mulsh(x, self._p5, 6) + self._p4_4096)
        f30 = _mulsh(xx, self._p3, 15) + _mulsh(x, self._p2, 5)  # d / p1 - 1, times 2**30
        d = (self._p1_4096 + _mulsh(f30, self._p1h, 10) + _mulsh(f30, self._p1l, 18) + 8) >> 4
        if d <= 0:
            raise WrongChipError(EIO, "bme280 at 0x%02x: calibration gives no pressure divisor" % self.address)
        q = n // d  # n / d with 24 fraction bits, by long division six bits at a time: r << 6 stays small
        r = n - q * d
        for _ in range(4):
            r <<= 6
            digit = r // d
            r -= digit * d
            q = (q << 6) + digit
        p8 = _mulsh(q, 6250, 16)  # p0 * 256
        hi = p8 >> 12
        lo = p8 & 0xFFF
        pp = hi * hi + ((hi * lo + (lo * lo >> 13)) >> 11)  # p8**2 / 2**24
        p8 += (_mulsh(pp, self._p9, 15) >> 4) + (_mulsh(p8, self._p8, 15) >> 4) + self._p7_16

        # Humidity in %RH * 4096, clamped to 0..100 as the datasheet does
        x = t_fine - 76800
        h = _mulsh((adc_h << 8) - self._h4_16384 - _mulsh(x, self._h5, 6), self._h2, 12)
        # e = h6 * x / 2**26 * (1 + h3 * x / 2**26), times 2**20
        e = ((self._h6 * x) >> 6) + (((((_sq(x) >> 7) * self._h3) >> 8) * self._h6) >> 7)
        h += _mulsh(h, e >> 10, 10) + (_mulsh(h, e & 0x3FF, 10) >> 10)
        x = h >> 7
        h -= (((x * x) >> 8) * self._h1) >> 9
        if h < 0:
            h = 0
        elif h > 409600:
            h = 409600

        return (x8 / 1310720, h / 4096, p8 / 256)


def _mulsh(a, b, s):
    """floor(a * b / 2**s), exact; a is split at bit s so that neither partial product needs a bignum."""
    return (a >> s) * b + (((a & ((1 << s) - 1)) * b) >> s)


def _sq(a):
    """floor(a * a / 2**10), exact, for |a| < 2**19 without a product over 2**28."""
    if a < 0:
        a = -a
    hi = a >> 9
    lo = a & 0x1FF
    return (hi * hi << 8) + hi * lo + (lo * lo >> 10)
