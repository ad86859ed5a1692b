"""A Bosch BME280 emulated at the register level, for the bench and for driver tests.

The emulator holds a 256-byte register file: calibration (0x88..0xA1, 0xE1..0xE7), chip id (0xD0), soft reset
(0xE0 <- 0xB6), ctrl_hum (0xF2), status (0xF3), ctrl_meas (0xF4), config (0xF5) and the ADC data (0xF7..0xFE).
Writes take register/value pairs after the first byte, as the chip does on I2C. A ctrl_meas write with a
forced mode starts one conversion: the status "measuring" bit stays set for ``measuring_reads`` status reads,
then the data registers take the new raw values and the mode returns to sleep. ctrl_hum only takes effect on
the next ctrl_meas write; a skipped channel (oversampling 0) reads 0x80000 (T, P) or 0x8000 (H). Temperature
and pressure resolution follow the oversampling (16 + osrs - 1 bits, 20 with the IIR filter on), and the
IIR filter smooths them like the chip's. Normal mode is not emulated (no conversions happen in it).

The raw values come from the target environment by inverting the datasheet's integer compensation
(bisection), so a correct driver reads the target back within the sensor's resolution. Raw temperatures are
multiples of 8: the integer formula ignores the low 3 bits, and there it agrees with the float formula.

Faults: ``nack`` (every access NACKs), ``chip_id`` (what 0xD0 reads), ``stuck`` (conversions leave the data
registers as they are), ``stall`` (the measuring bit never clears). ``load_adc()`` writes raw values straight
into the data registers. Every public method takes a lock: the bench may change the environment while a node
reads.
"""
import random
import struct
import threading
from collections import namedtuple

from .i2cbus import Nack

CHIP_ID = 0x60
REG_CALIB_TP, REG_CHIP_ID, REG_RESET, REG_CALIB_H = 0x88, 0xD0, 0xE0, 0xE1
REG_CTRL_HUM, REG_STATUS, REG_CTRL_MEAS, REG_CONFIG, REG_DATA = 0xF2, 0xF3, 0xF4, 0xF5, 0xF7
RESET_WORD = 0xB6
STATUS_MEASURING, STATUS_IM_UPDATE = 0x08, 0x01
SKIPPED_20BIT, SKIPPED_16BIT = 0x80000, 0x8000

Calibration = namedtuple("Calibration", "t1 t2 t3 p1 p2 p3 p4 p5 p6 p7 p8 p9 h1 h2 h3 h4 h5 h6")
Calibration.__doc__ = "The BME280 trimming parameters dig_T1..dig_H6."

# T and P: the datasheet's worked example; H: values typical of shipped parts.
DEFAULT_CALIBRATION = Calibration(27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000,
                                  75, 362, 0, 313, 50, 30)

_TP = struct.Struct("<HhhHhhhhhhhh")


def pack_calibration(cal):
    """33 bytes: registers 0x88..0xA1 then 0xE1..0xE7."""
    e4, e6 = (cal.h4 >> 4) & 0xFF, (cal.h5 >> 4) & 0xFF
    e5 = (cal.h4 & 0x0F) | (cal.h5 & 0x0F) << 4
    return (_TP.pack(*cal[:12]) + bytes((0, cal.h1))
            + struct.pack("<hBBBBb", cal.h2, cal.h3, e4, e5, e6, cal.h6))


def unpack_calibration(data):
    data = bytes(data)
    if len(data) != 33:
        raise ValueError(f"calibration is 33 bytes (0x88..0xA1, 0xE1..0xE7), not {len(data)}")
    h2, h3, e4, e5, e6, h6 = struct.unpack("<hBbBbb", data[26:])
    return Calibration(*_TP.unpack(data[:24]), data[25], h2, h3, e4 * 16 + (e5 & 0x0F), e6 * 16 + (e5 >> 4), h6)


def random_calibration(seed):
    """A calibration drawn from the spread seen on real parts: valid (monotonic) over the operating range."""
    r = random.Random(seed)
    u = r.randint
    return Calibration(u(26000, 29000), u(25500, 27500), u(-1000, 100),
                       u(35500, 38500), u(-11500, -10000), u(2800, 3400), u(2000, 9000), u(-200, 300), u(-10, 0),
                       u(9000, 16000), u(-15000, -10000), u(4000, 6500),
                       u(0, 100), u(330, 400), u(0, 10), u(260, 360), u(-20, 60), u(20, 40))


# The datasheet's integer compensation (section 4.2.3), with C's truncating division.
def t_fine(cal, adc_t):
    var1 = (((adc_t >> 3) - (cal.t1 << 1)) * cal.t2) >> 11
    d = (adc_t >> 4) - cal.t1
    return var1 + ((((d * d) >> 12) * cal.t3) >> 14)


def pressure_q24_8(cal, fine, adc_p):
    """Pressure in Pa * 256."""
    var1 = fine - 128000
    var2 = var1 * var1 * cal.p6 + ((var1 * cal.p5) << 17) + (cal.p4 << 35)
    var1 = ((var1 * var1 * cal.p3) >> 8) + ((var1 * cal.p2) << 12)
    var1 = (((1 << 47) + var1) * cal.p1) >> 33
    if var1 == 0:
        return 0
    num = ((1048576 - adc_p) << 31) - var2
    p = abs(num) * 3125 // abs(var1) * (1 if (num < 0) == (var1 < 0) else -1)
    var1 = (cal.p9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (cal.p8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (cal.p7 << 4)


def humidity_q22_10(cal, fine, adc_h):
    """Relative humidity in % * 1024, clamped to 0..100 %."""
    v = fine - 76800
    v = ((((adc_h << 14) - (cal.h4 << 20) - cal.h5 * v) + 16384) >> 15) * (
        (((((v * cal.h6) >> 10) * (((v * cal.h3) >> 11) + 32768)) >> 10) + 2097152) * cal.h2 + 8192 >> 14)
    v -= ((((v >> 15) * (v >> 15)) >> 7) * cal.h1) >> 4
    return min(max(v, 0), 419430400) >> 12


def _invert(f, target, hi, what):
    """The x in 0..hi whose monotonic f(x) is nearest to target (bisection)."""
    lo_val, hi_val = f(0), f(hi)
    sign = 1 if hi_val >= lo_val else -1
    if not min(lo_val, hi_val) <= target <= max(lo_val, hi_val):
        raise ValueError(f"{what} is outside what this calibration can represent")
    lo, up = 0, hi  # invariant: sign*f(up) >= sign*target
    while lo < up:
        mid = (lo + up) // 2
        if sign * f(mid) >= sign * target:
            up = mid
        else:
            lo = mid + 1
    if up > 0 and abs(f(up - 1) - target) < abs(f(up) - target):
        return up - 1
    return up


class BME280Emulator:
    NVM_READS = 1  # status reads showing im_update after a soft reset

    def __init__(self, temperature_c=21.0, humidity_rh=45.0, pressure_pa=101325.0, calibration=None,
                 chip_id=CHIP_ID, measuring_reads=1):
        """``calibration``: None (a real part's), an int seed (random but valid), 33 bytes, or Calibration."""
        if calibration is None:
            calibration = DEFAULT_CALIBRATION
        elif isinstance(calibration, int):
            calibration = random_calibration(calibration)
        elif not isinstance(calibration, Calibration):
            calibration = unpack_calibration(calibration)
        self.calibration = calibration
        self._lock = threading.RLock()
        self._env_lock = threading.Lock()
        self._regs = bytearray(256)
        cal = pack_calibration(calibration)
        self._regs[REG_CALIB_TP:REG_CALIB_TP + 26] = cal[:26]
        self._regs[REG_CALIB_H:REG_CALIB_H + 7] = cal[26:]
        self.chip_id = chip_id
        self.measuring_reads = measuring_reads
        self.nack = False
        self.stuck = False
        self.stall = False
        self.conversions = 0
        self._env = (temperature_c, humidity_rh, pressure_pa)
        self._raw = None
        self.set_environment()
        self._power_on()

    # --- bench interface -------------------------------------------------------------------------------
    @property
    def chip_id(self):
        return self._regs[REG_CHIP_ID]

    @chip_id.setter
    def chip_id(self, value):
        with self._lock:
            self._regs[REG_CHIP_ID] = value

    @property
    def environment(self):
        """(temperature_c, humidity_rh, pressure_pa) the sensor is exposed to."""
        return self._env

    def set_environment(self, temperature_c=None, humidity_rh=None, pressure_pa=None):
        """Change what the next conversions measure; ValueError if the sensor cannot represent it."""
        with self._env_lock:  # one setter at a time; the register lock is held only for the swap
            t, h, p = self._env
            t = t if temperature_c is None else temperature_c
            h = h if humidity_rh is None else humidity_rh
            p = p if pressure_pa is None else pressure_pa
            if not 0 <= h <= 100:
                raise ValueError(f"humidity {h} %RH is outside 0..100")
            cal = self.calibration
            # Multiples of 8, where the integer formula (it drops adc_T's low 3 bits) agrees with the float one.
            adc_t = _invert(lambda m: t_fine(cal, m << 3), t * 5120, 0xFFFFF >> 3, f"temperature {t} C") << 3
            fine = t_fine(cal, adc_t)
            adc_p = _invert(lambda x: pressure_q24_8(cal, fine, x), p * 256, 0xFFFFF, f"pressure {p} Pa")
            adc_h = _invert(lambda x: humidity_q22_10(cal, fine, x), h * 1024, 0xFFFF, f"humidity {h} %RH")
            with self._lock:
                self._env, self._raw = (t, h, p), (adc_t, adc_p, adc_h)

    def load_adc(self, adc_t=None, adc_p=None, adc_h=None):
        """Write raw ADC values straight into 0xF7..0xFE (with ``stuck`` set, conversions keep them)."""
        with self._lock:
            old_t, old_p, old_h = self.adc
            self._store(old_t if adc_t is None else adc_t, old_p if adc_p is None else adc_p,
                        old_h if adc_h is None else adc_h)

    @property
    def adc(self):
        """(adc_t, adc_p, adc_h) as the data registers hold them now."""
        with self._lock:
            d = self._regs[REG_DATA:REG_DATA + 8]
        return (d[3] << 12 | d[4] << 4 | d[5] >> 4, d[0] << 12 | d[1] << 4 | d[2] >> 4, d[6] << 8 | d[7])

    # --- device interface (fieldnode.bench.i2cbus) -----------------------------------------------------
    def read_register(self, reg, n):
        with self._lock:
            if self.nack:
                raise Nack("bme280 emulator: NACK (fault injected)")
            out = bytearray(n)
            for i in range(n):
                r = (reg + i) & 0xFF
                if r == REG_STATUS:
                    out[i] = self._read_status()
                else:
                    out[i] = self._regs[r]
            return bytes(out)

    def write_register(self, reg, data):
        with self._lock:
            if self.nack:
                raise Nack("bme280 emulator: NACK (fault injected)")
            data = bytes(data)
            if data:
                self._write(reg, data[0])
            for i in range(1, len(data) - 1, 2):  # then register/value pairs
                self._write(data[i], data[i + 1])

    # --- chip behaviour --------------------------------------------------------------------------------
    def _power_on(self):
        regs = self._regs
        regs[REG_RESET] = regs[REG_CTRL_HUM] = regs[REG_STATUS] = regs[REG_CTRL_MEAS] = regs[REG_CONFIG] = 0
        self._store(SKIPPED_20BIT, SKIPPED_20BIT, SKIPPED_16BIT)
        self._osrs_h = 0  # ctrl_hum as latched by the last ctrl_meas write
        self._measuring_left = 0
        self._pending = None
        self._filtered = None
        self._nvm_left = self.NVM_READS

    def _write(self, reg, value):
        if reg == REG_RESET:
            if value == RESET_WORD:
                self._power_on()
        elif reg == REG_CTRL_HUM:
            self._regs[reg] = value & 0x07
        elif reg == REG_CONFIG:
            self._regs[reg] = value & 0xFD
        elif reg == REG_CTRL_MEAS:
            self._regs[reg] = value
            self._osrs_h = self._regs[REG_CTRL_HUM]
            if value & 0x03 in (1, 2):
                self._start_conversion()
        # every other register is read-only

    def _read_status(self):
        value = (STATUS_MEASURING if self._measuring_left else 0) | (STATUS_IM_UPDATE if self._nvm_left else 0)
        if self._nvm_left:
            self._nvm_left -= 1
        if self._measuring_left and not self.stall:
            self._measuring_left -= 1
            if not self._measuring_left:
                self._finish_conversion()
        return value

    def _start_conversion(self):
        meas = self._regs[REG_CTRL_MEAS]
        osrs_t, osrs_p = meas >> 5, (meas >> 2) & 0x07
        coeff = (1, 2, 4, 8, 16, 16, 16, 16)[(self._regs[REG_CONFIG] >> 2) & 0x07]
        adc_t, adc_p, adc_h = self._raw
        if coeff > 1:
            if self._filtered is None:
                self._filtered = (float(adc_t), float(adc_p))
            ft, fp = self._filtered
            ft += (adc_t - ft) / coeff
            fp += (adc_p - fp) / coeff
            self._filtered = (ft, fp)
            adc_t, adc_p = round(ft), round(fp)
        self._pending = (self._quantize(adc_t, osrs_t, coeff) if osrs_t else SKIPPED_20BIT,
                         self._quantize(adc_p, osrs_p, coeff) if osrs_p else SKIPPED_20BIT,
                         adc_h if self._osrs_h else SKIPPED_16BIT)
        self._measuring_left = max(self.measuring_reads, 0)
        if not self._measuring_left:  # an instant conversion, unless stalled
            if self.stall:
                self._measuring_left = 1
            else:
                self._finish_conversion()

    @staticmethod
    def _quantize(raw, osrs, coeff):
        bits = 20 if coeff > 1 else 15 + min(osrs, 5)
        shift = 20 - bits
        return min((raw + (1 << shift >> 1)) >> shift << shift, 0xFFFFF >> shift << shift)

    def _finish_conversion(self):
        if not self.stuck:
            self._store(*self._pending)
        self._pending = None
        self._regs[REG_CTRL_MEAS] &= 0xFC  # back to sleep
        self.conversions += 1

    def _store(self, adc_t, adc_p, adc_h):
        self._regs[REG_DATA:REG_DATA + 8] = bytes((
            adc_p >> 12 & 0xFF, adc_p >> 4 & 0xFF, (adc_p & 0x0F) << 4,
            adc_t >> 12 & 0xFF, adc_t >> 4 & 0xFF, (adc_t & 0x0F) << 4,
            adc_h >> 8 & 0xFF, adc_h & 0xFF))
