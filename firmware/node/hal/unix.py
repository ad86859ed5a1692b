# Platform layer for the MicroPython Unix port (the HIL bench): the sensor bus is a socket to the bench's
# emulated silicon, the network is the host's, the clock is the host's clock. Nothing happens at import.
import sys
import time


class Platform:
    TIME_QUALITY = 2  # host clock (see docs/protocol.md)

    def __init__(self, board, config):
        self._board = board
        self._bench = config.bench or {}

    def i2c(self):
        from node.hal.sockbus import SocketI2C

        where = self._bench.get("i2c")
        if not where:
            raise OSError("config.json: bench.i2c (HOST:PORT of the bench sensor bus) is required on the Unix port")
        host, port = where.rsplit(":", 1)
        return SocketI2C(host, int(port), self._bench.get("bus", ""))

    def connect_network(self, timeout_ms):
        return True

    def network_up(self):
        return True

    def sync_time(self):
        return self.TIME_QUALITY

    def now(self):
        return int(time.time()) + _clock_offset()

    def start_watchdog(self, timeout_ms):
        pass  # the bench supervises the process instead

    def feed_watchdog(self):
        pass

    def sleep_ms(self, ms):
        # The Unix port's time.sleep_ms() waits in 1 ms naps until the time is up: ~1000 wake-ups a second for
        # an idle node, which is what limits how many virtual nodes a machine carries. time.sleep() waits in
        # one system call. (A board's sleep_ms yields to its RTOS: the ESP32 platform has no such method.)
        time.sleep(ms / 1000)

    def status_led(self, on):
        pass

    def reset(self):
        # A virtual board restarts the interpreter when it exits with this code, like a hard reset.
        sys.exit(3)

    def unique_id(self):
        return b"unix"


def _clock_offset():
    # The bench's clock-jump fault: seconds added to the host clock, from the file `clock_offset` in the
    # node's folder (its filesystem); no file, no offset. Read on every now(): one open() per reading.
    try:
        with open("clock_offset") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0
