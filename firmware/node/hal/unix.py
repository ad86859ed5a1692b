# Platform layer for the MicroPython Unix port (the HIL bench): the sensor bus is a socket to the bench's
# emulated silicon, the network is the host's, the clock is the host's clock. Nothing happens at import.
import sys
import time


class Platform:
    TIME_QUALITY = 2  # host clock (see docs/protocol.md)

    def __init__(self, board, config):
        self._board = board
        self._bench = config.bench or {}
        self._offset = 0
        self._offset_read_at = None
        self._wall_ms = 0  # the host clock at _wall_at (ticks), in ms: now() counts on from there
        self._wall_at = None
        self._clock_file = _exists(_CLOCK_FILE)  # only a bench that steps clocks makes it, before boot

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
        # time.time() is a float (an allocation), so it is read every _WALL_TTL_MS and the millisecond ticks
        # count on from there (small ints on the 64-bit port: nothing allocated).
        at = time.ticks_ms()
        if self._wall_at is None or time.ticks_diff(at, self._wall_at) >= _WALL_TTL_MS:
            self._wall_ms = int(time.time() * 1000)
            self._wall_at = at = time.ticks_ms()
        now = (self._wall_ms + time.ticks_diff(at, self._wall_at)) // 1000
        if not self._clock_file:
            return now
        # The bench's clock-jump file, re-read at most every _OFFSET_TTL_MS (each read allocates): a step
        # noticed a moment late is what a real RTC step looks like too.
        if self._offset_read_at is None or time.ticks_diff(at, self._offset_read_at) >= _OFFSET_TTL_MS:
            self._offset = _clock_offset()
            self._offset_read_at = at
        return now + self._offset

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


_CLOCK_FILE = "clock_offset"
_OFFSET_TTL_MS = 200
_WALL_TTL_MS = 10000


def _exists(path):
    import os

    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _clock_offset():
    # The bench's clock-jump fault: seconds added to the host clock, from the file `clock_offset` in the
    # node's folder (its filesystem); no file, no offset.
    try:
        with open(_CLOCK_FILE) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0
