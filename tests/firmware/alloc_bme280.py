# Run on the MicroPython Unix port by test_on_unix_port.py: how many heap bytes one BME280.read() allocates,
# next to what building its result alone (a tuple of three floats worked out from ints) allocates.
# Prints one JSON line. The I2C stand-in allocates nothing itself, so every byte counted is the driver's.
import gc
import json
import sys

from node.sensors.bme280 import BME280

READS = 200
# Calibration 0x88..0xA1 and 0xE1..0xE7 (the datasheet's example T/P words), then raw T, P, H.
CAL = bytes.fromhex("706b436718fc7d8e43d6d00b270b8c00f9ff8c3cf8c67017004b6a01001329031e")


class StillI2C:
    """A BME280 register image that answers from preallocated memory; a conversion is measuring for two
    status polls."""

    def __init__(self, adc_t, adc_p, adc_h):
        self.regs = bytearray(256)
        self.regs[0x88:0x88 + 26] = CAL[:26]
        self.regs[0xE1:0xE1 + 7] = CAL[26:]
        self.regs[0xD0] = 0x60
        self.regs[0xF7:0xFF] = bytes((adc_p >> 12, adc_p >> 4 & 0xFF, (adc_p & 0xF) << 4,
                                      adc_t >> 12, adc_t >> 4 & 0xFF, (adc_t & 0xF) << 4, adc_h >> 8, adc_h & 0xFF))
        self.measuring = 0

    def readfrom_mem_into(self, addr, reg, buf):
        regs = self.regs
        for i in range(len(buf)):
            buf[i] = regs[reg + i]
        if reg == 0xF3:
            buf[0] = 0x08 if self.measuring else 0
            if self.measuring:
                self.measuring -= 1

    def readfrom_mem(self, addr, reg, n):
        return bytes(self.regs[reg:reg + n])

    def writeto_mem(self, addr, reg, buf):
        if reg == 0xF2 and len(buf) == 5 and buf[4] & 3 == 1:
            self.measuring = 2


def result_only(a, b, c):
    return (a / 1310720, b / 4096, c / 256)


def per_call(fn, *args):
    fn(*args)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for _ in range(READS):
            fn(*args)
        after = gc.mem_alloc()
    finally:
        gc.enable()
    return (after - before) / READS


# raw T, P, H: the middle, and the corners of the range (-45 degC dry, +90 degC saturated)
CASES = (("mid", (519888, 415148, 30000)), ("cold", (300000, 850000, 0)), ("hot", (720000, 250000, 65535)))


def main():
    out = {}
    for name, adc in CASES:
        sensor = BME280(StillI2C(*adc))
        out[name] = {"read": per_call(sensor.read), "reading": sensor.read()}
    out["result_only"] = per_call(result_only, 32117862, 225282, 25767232)
    print(json.dumps(out))


if __name__ == "__main__" and sys.implementation.name == "micropython":
    main()
