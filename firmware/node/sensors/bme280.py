# Bosch BME280 (temperature, humidity, pressure) on any object with machine.I2C's memory methods:
# readfrom_mem_into(addr, reg, buf), readfrom_mem(addr, reg, n), writeto_mem(addr, reg, buf).
#
# Every read() is one forced-mode conversion and one burst read of 0xF7..0xFE, so T, H and P come from the
# same sample. Compensation uses the datasheet's floating-point formulas (appendix 8.1). For humidity these
# differ from Bosch's C API (and Adafruit's port of it) when dig_H3 != 0; they agree with the datasheet's
# integer formulas, which fieldnode.bench.bme280_emu implements.
# Oversampling and the IIR filter are given as factors, as the datasheet names them:
# osrs_* in (1, 2, 4, 8, 16) and iir in (0 = off, 2, 4, 8, 16). Skipping a channel is not supported.
#
# Each read() writes ctrl_hum, config and ctrl_meas again in one I2C write (the BME280 takes register/value
# pairs), so a sensor that reset itself (brown-out) is configured again by the next read.
#
# Limitations: forced mode only; on ports with single-precision floats (ESP32) the pressure carries
# float32 rounding on top of the sensor's own noise.
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
        t1, self._t2, self._t3, self._p1, self._p2, self._p3, p4, self._p5, self._p6, self._p7, self._p8, \
            self._p9 = struct.unpack_from("<HhhHhhhhhhhh", tp)
        self._h1 = tp[25]
        h2, h3, e4, e5, e6, h6 = struct.unpack("<hBbBbb", h)
        h4 = e4 * 16 + (e5 & 0x0F)  # e4, e6 are signed: H4, H5 are signed 12-bit
        h5 = e6 * 16 + (e5 >> 4)
        # The formulas' terms that depend on the calibration only are worked out here, once (every float
        # operation allocates), as the very operations read() would do: the results are the same to the last
        # bit. Only these are kept, not the words they come from (an object with more than 29 attributes
        # takes a larger block).
        self._t1_16 = t1 * 16
        self._p4_65536 = p4 * 65536.0
        self._h4_64 = h4 * 64.0
        self._h5_16384 = h5 / 16384.0
        self._h2_65536 = h2 / 65536.0
        self._h6_2_26 = h6 / 67108864.0
        self._h3_2_26 = h3 / 67108864.0

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

        # Temperature; t_fine carries it into the other two channels. The datasheet's
        # adc_t / 16384.0 - t1 / 1024.0 and adc_t / 131072.0 - t1 / 8192.0, each a difference of two exact
        # quotients by powers of two that is itself exact (21 bits): the same values as below, where the
        # difference is taken in integers first.
        dt = adc_t - self._t1_16
        x = dt / 16384.0
        y = dt / 131072.0
        x = x * self._t2 + y * y * self._t3
        t_fine = int(x)
        temperature = x / 5120.0

        # Pressure
        x = t_fine / 2.0 - 64000.0
        y = x * x * self._p6 / 32768.0 + x * self._p5 * 2.0
        y = y / 4.0 + self._p4_65536
        x = (self._p3 * x * x / 524288.0 + self._p2 * x) / 524288.0
        x = (1.0 + x / 32768.0) * self._p1
        if x == 0:
            raise WrongChipError(EIO, "bme280 at 0x%02x: calibration gives a zero pressure divisor" % self.address)
        p = (1048576.0 - adc_p - y / 4096.0) * 6250.0 / x
        pressure = p + (self._p9 * p * p / 2147483648.0 + p * self._p8 / 32768.0 + self._p7) / 16.0

        # Humidity, clamped to 0..100 as the datasheet does
        x = t_fine - 76800.0
        h = (adc_h - (self._h4_64 + self._h5_16384 * x)) * (
            self._h2_65536 * (1.0 + self._h6_2_26 * x * (1.0 + self._h3_2_26 * x)))
        h = h * (1.0 - self._h1 * h / 524288.0)
        humidity = 0.0 if h < 0.0 else 100.0 if h > 100.0 else h

        return (temperature, humidity, pressure)
