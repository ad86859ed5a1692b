# Sensor health: is a BME280 sample a measurement? The supervisor (node/app.py) sends the verdict as the
# reading's sensor_status bits (docs/protocol.md) and a channel that is not believed as "no valid value",
# never as a number.
#
#   READ_ERROR   the bus failed (NACK, timeout, a conversion that never finished)
#   WRONG_CHIP   something answers at the address but its chip id is not a BME280's
#   STUCK        the ADC stopped converting: STUCK_SAMPLES identical raw samples in a row (a working part
#                always shows some noise), confirmed by a soft reset and one forced conversion that leaves
#                the data registers at their reset values (datasheet memory map: 0x80000, 0x80000, 0x8000);
#                a part that converts after the reset is not stuck, and the count starts again
#   IMPLAUSIBLE  a channel outside the sensor's operating range (-40..85 °C, 0..100 %RH, 300..1100 hPa), or
#                changing faster than MAX_RATE per second since the previous sample (time floored at 1 s);
#                only that channel is refused. The previous sample is the reference whether or not it was
#                refused, so a real step costs one refused sample and a one-sample spike two.
#
# Everything here is pure logic apart from conversion_stuck(), which reads 8 registers.
from micropython import const

from node.timing import ticks_diff

READ_ERROR = const(1)
WRONG_CHIP = const(2)
STUCK = const(4)
IMPLAUSIBLE = const(8)
NAMES = ((READ_ERROR, "read error"), (WRONG_CHIP, "wrong chip id"), (STUCK, "stuck value"),
         (IMPLAUSIBLE, "implausible value"))

STUCK_SAMPLES = const(5)
LIMITS = ((-40.0, 85.0), (0.0, 100.0), (30000.0, 110000.0))  # °C, %RH, Pa
MAX_RATE = (3.0, 10.0, 300.0)  # per second: a glitch detector, not a model of the room
_MIN_STEP = (-3.0, -10.0, -300.0)  # -MAX_RATE
_MIN_DT_MS = const(1000)
_REG_DATA = const(0xF7)
_ADC_RESET = b"\x80\x00\x00\x80\x00\x00\x80\x00"


def describe(status):
    """'ok' or the names of the set bits, for console lines."""
    if not status:
        return "ok"
    return ", ".join(name for bit, name in NAMES if status & bit)


def conversion_stuck(bus, address, buf):
    """Right after a soft reset and one forced conversion: True when the conversion left the data registers
    (0xF7..0xFE, read into the 8-byte `buf`) at their reset values."""
    bus.readfrom_mem_into(address, _REG_DATA, buf)
    return buf == _ADC_RESET


class Health:
    def __init__(self):
        self._last = None  # the previous raw sample, for the repeat count
        self._same = 0
        self._ref = None  # the previous judged sample and when it was taken, for the rate check
        self._ref_ms = 0

    def reset(self):
        """The sensor was (re)opened: forget the previous sample."""
        self._last = self._ref = None
        self._same = 0

    def repeats(self, sample):
        """How many samples in a row, this one included, were identical to the last bit."""
        last = self._last
        if last is not None and sample[0] == last[0] and sample[1] == last[1] and sample[2] == last[2]:
            self._same += 1
        else:
            self._same = 1
        self._last = sample
        return self._same

    def judge(self, sample, now_ms, out):
        """Write each channel's value into out[0..2], or None where it is not believable; return IMPLAUSIBLE
        if a channel was refused, else 0."""
        status = 0
        ref = self._ref
        dt = _MIN_DT_MS
        if ref is not None:
            dt = ticks_diff(now_ms, self._ref_ms)
            if dt < _MIN_DT_MS:
                dt = _MIN_DT_MS
        for c in range(3):
            v = sample[c]
            lo, hi = LIMITS[c]
            ok = lo <= v <= hi  # False for NaN too
            if ok and ref is not None:
                # |v - ref| <= the rate's limit, without making -d (float arithmetic allocates); the common case,
                # a sample a second or less after the last, allocates nothing but the difference
                if dt == _MIN_DT_MS:
                    down, up = _MIN_STEP[c], MAX_RATE[c]
                else:
                    up = MAX_RATE[c] * dt / 1000
                    down = -up
                ok = down <= v - ref[c] <= up
            if ok:
                out[c] = v
            else:
                out[c] = None
                status = IMPLAUSIBLE
        self._ref = sample
        self._ref_ms = now_ms
        return status
