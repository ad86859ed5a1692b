# The BME280 driver against an in-test register image; runs on CPython (pytest) and on the Unix port.
# TABLE holds readings computed by the Adafruit driver for these images; tests/unit/test_bme280_vs_adafruit.py
# checks the table against Adafruit again, so the expected values are not ours.
import errno

from node.sensors.bme280 import BME280

ADDR = 0x76
# Calibration registers 0x88..0xA1 then 0xE1..0xE7 (dig_H3 is 0, as on shipped parts; see the unit test).
CAL_DATASHEET = "706b436718fc7d8e43d6d00b270b8c00f9ff8c3cf8c67017004b6a01001329031e"
CAL_OTHER = "be6a316b4cfdfd9049d8210b210adc00feff2b261bd1f31800078a01001078ff21"
# calibration, adc_t, adc_p, adc_h, temperature_c, humidity_rh, pressure_pa
TABLE = (
    (CAL_DATASHEET, 519888, 415148, 30000, 25.082421875, 55.000712804837015, 100653.25814481472),
    (CAL_DATASHEET, 350000, 300000, 20000, -28.4740234375, 3.2181298430655416, 110777.79160133595),
    (CAL_DATASHEET, 650000, 800000, 35000, 65.655859375, 86.29312932208008, 36909.22457171325),
    (CAL_DATASHEET, 450000, 600000, 27000, 3.1298828125, 38.2285932320784, 66694.60267021894),
    (CAL_DATASHEET, 600000, 400000, 0, 50.109765625, 0.0, 107252.0096207666),
    (CAL_DATASHEET, 600000, 400000, 65535, 50.109765625, 100.0, 107252.0096207666),
    (CAL_OTHER, 519888, 415148, 30000, 26.9900390625, 81.27940130352336, 100131.27698226899),
    (CAL_OTHER, 350000, 300000, 20000, -28.5900390625, 15.95357647478427, 110444.725699135),
    (CAL_OTHER, 650000, 800000, 35000, 69.25, 100.0, 36697.408174610886),
    (CAL_OTHER, 450000, 600000, 27000, 4.18046875, 58.865863980101125, 66539.70153896564),
)
# Adafruit truncates t_fine before dividing (<= 1/5120 degC lower); the datasheet formula does not. Our
# integer working of the float formulas adds at most 2e-6 degC, 0.002 %RH, 0.06 Pa.
TOL = (0.00025, 0.002, 0.06)


class FakeI2C:
    """A BME280 register image. Status reads come from `status` (then 0); every access is logged."""

    def __init__(self, cal_hex=CAL_DATASHEET, chip_id=0x60, adc=(519888, 415148, 30000)):
        self.regs = bytearray(256)
        cal = bytes.fromhex(cal_hex)
        self.regs[0x88:0x88 + 26] = cal[:26]
        self.regs[0xE1:0xE1 + 7] = cal[26:]
        self.regs[0xD0] = chip_id
        self.set_adc(*adc)
        self.status = [0x01]  # im_update once after the reset
        self.stuck_status = None  # a status value returned forever
        self.log = []

    def set_adc(self, adc_t, adc_p, adc_h):
        self.regs[0xF7:0xFF] = bytes((adc_p >> 12, adc_p >> 4 & 0xFF, (adc_p & 0xF) << 4,
                                      adc_t >> 12, adc_t >> 4 & 0xFF, (adc_t & 0xF) << 4, adc_h >> 8, adc_h & 0xFF))

    def _read(self, addr, reg, n):
        assert addr == ADDR, hex(addr)
        self.log.append(("r", reg, n))
        if reg == 0xF3 and n == 1:
            if self.stuck_status is not None:
                return bytes((self.stuck_status,))
            return bytes((self.status.pop(0) if self.status else 0,))
        return bytes(self.regs[reg:reg + n])

    def readfrom_mem_into(self, addr, reg, buf):
        data = self._read(addr, reg, len(buf))
        for i in range(len(buf)):
            buf[i] = data[i]

    def readfrom_mem(self, addr, reg, n):
        return self._read(addr, reg, n)

    def writeto_mem(self, addr, reg, buf):
        assert addr == ADDR, hex(addr)
        self.log.append(("w", reg, bytes(buf)))
        meas = buf[0] if reg == 0xF4 else buf[4] if reg == 0xF2 and len(buf) == 5 else None
        if meas is not None and meas & 0x03 == 0x01:
            self.status = [0x08, 0x08]  # a forced conversion: measuring for two polls


def close(a, b, tol):
    return abs(a - b) <= tol


def test_table_matches_reference_readings():
    for cal, adc_t, adc_p, adc_h, t, h, p in TABLE:
        i2c = FakeI2C(cal, adc=(adc_t, adc_p, adc_h))
        got = BME280(i2c).read()
        assert type(got) is tuple and len(got) == 3, got
        for value, want, tol in zip(got, (t, h, p), TOL):
            assert type(value) is float, got
            assert close(value, want, tol), (adc_t, adc_p, adc_h, got, (t, h, p))


def test_datasheet_example_temperature():
    # Datasheet example: dig_T1..T3 = 27504, 26435, -1000 and adc_T = 519888 give 25.08 degC.
    t, _, _ = BME280(FakeI2C(CAL_DATASHEET, adc=(519888, 415148, 30000))).read()
    assert close(t, 25.08, 0.005), t


def test_constructor_sequence():
    i2c = FakeI2C()
    s = BME280(i2c, ADDR, osrs_t=4, osrs_h=8, osrs_p=1, iir=16)
    assert s.chip_id == 0x60 and s.address == ADDR
    log = i2c.log
    assert log[0] == ("r", 0xD0, 1), log
    assert log[1] == ("w", 0xE0, b"\xb6"), log
    # waited for im_update to clear: polled status until it read 0
    assert log[2] == ("r", 0xF3, 1) and log[3] == ("r", 0xF3, 1), log
    reads = [e for e in log if e[0] == "r" and e[1] in (0x88, 0xE1)]
    assert reads == [("r", 0x88, 26), ("r", 0xE1, 7)], reads
    writes = [e for e in log if e[0] == "w"][1:]
    assert writes == [("w", 0xF2, b"\x04"), ("w", 0xF5, b"\x10"), ("w", 0xF4, b"\x64")], writes  # sleep mode


def test_read_is_one_forced_conversion_and_one_burst():
    i2c = FakeI2C()
    s = BME280(i2c, ADDR, osrs_t=2, osrs_h=1, osrs_p=16, iir=4)
    i2c.log = []
    s.read()
    writes = [e for e in i2c.log if e[0] == "w"]
    # ctrl_hum, then config and ctrl_meas as register/value pairs; ctrl_meas = osrs_t x2, osrs_p x16, forced
    assert writes == [("w", 0xF2, bytes((0x01, 0xF5, 0x08, 0xF4, 0x55)))], writes
    polls = [e for e in i2c.log if e == ("r", 0xF3, 1)]
    assert len(polls) == 3, i2c.log  # measuring, measuring, done
    bursts = [e for e in i2c.log if e[0] == "r" and e[1] != 0xF3]
    assert bursts == [("r", 0xF7, 8)], i2c.log
    assert i2c.log.index(bursts[0]) > i2c.log.index(polls[-1]), i2c.log


def test_sample_is_taken_after_the_conversion():
    i2c = FakeI2C(adc=(350000, 300000, 20000))
    s = BME280(i2c)
    first = s.read()
    i2c.set_adc(519888, 415148, 30000)
    second = s.read()
    assert close(second[0], 25.0824, 0.001) and not close(first[0], second[0], 1), (first, second)


def test_wrong_chip_id_names_address_and_id():
    for chip_id in (0x58, 0x00, 0xFF):
        i2c = FakeI2C(chip_id=chip_id)
        try:
            BME280(i2c, ADDR)
        except OSError as exc:
            msg = str(exc)
            assert "0x76" in msg and ("0x%02x" % chip_id) in msg and "id" in msg, msg
        else:
            raise AssertionError("no error for chip id 0x%02x" % chip_id)
        assert [e for e in i2c.log if e[0] == "w"] == [], "wrote to a chip that is not a BME280"


def test_conversion_that_never_finishes_times_out():
    i2c = FakeI2C()
    s = BME280(i2c)
    i2c.stuck_status = 0x08
    i2c.log = []
    try:
        s.read()
    except OSError as exc:
        assert exc.errno == errno.ETIMEDOUT, exc
        assert "0x76" in str(exc), exc
    else:
        raise AssertionError("read() returned while the sensor was still measuring")
    polls = len([e for e in i2c.log if e == ("r", 0xF3, 1)])
    assert 10 <= polls <= 100, polls
    assert ("r", 0xF7, 8) not in i2c.log, "read stale data after the timeout"


def test_reset_that_never_finishes_times_out():
    i2c = FakeI2C()
    i2c.stuck_status = 0x01
    try:
        BME280(i2c)
    except OSError as exc:
        assert exc.errno == errno.ETIMEDOUT, exc
    else:
        raise AssertionError("constructor returned before the NVM copy finished")


def test_bus_errors_propagate():
    class Nacking(FakeI2C):
        def _read(self, addr, reg, n):
            raise OSError(errno.ENODEV)

    try:
        BME280(Nacking())
    except OSError as exc:
        assert exc.args[0] == errno.ENODEV, exc  # machine.I2C passes the code alone
    else:
        raise AssertionError("a NACK went unnoticed")


def test_settings_are_validated():
    for kwargs in ({"osrs_t": 0}, {"osrs_h": 3}, {"osrs_p": 5}, {"osrs_p": 32}, {"iir": 1}, {"iir": 3},
                   {"osrs_t": "2"}):
        try:
            BME280(FakeI2C(), **kwargs)
        except ValueError:
            pass
        else:
            raise AssertionError("accepted %r" % (kwargs,))
    BME280(FakeI2C(), osrs_t=16, osrs_h=16, osrs_p=1, iir=2)

