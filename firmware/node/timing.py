# Millisecond ticks (MicroPython's time.ticks_*, with a CPython stand-in for the unit tests) and the
# reconnect backoff the supervisor uses for the broker and the Wi-Fi.
import random
import time

try:
    from time import sleep_ms, ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython (unit tests): plain integers, no wrap-around
    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_add(ticks, delta):
        return ticks + delta

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        time.sleep(ms / 1000)


class Backoff:
    """Exponential backoff with jitter, and a bounded cost of coming back.

    After each failure in a row the delay doubles, from `first_ms` up to `max_ms`, but it never exceeds half
    the time since the first failure of the row (nor goes below `first_ms`): a link that was away for T is
    retried within about T/2 + first_ms of its return, while the attempts still thin out geometrically. The
    wait is a random time between half and all of that ("equal jitter"), so a fleet that lost its broker
    together does not come back in step. reset() after a success."""

    def __init__(self, first_ms, max_ms):
        self.first_ms = first_ms
        self.max_ms = max_ms
        self.failures = 0
        self.wait_ms = 0  # the wait chosen after the last failure
        self._delay = first_ms
        self._since = 0  # when the current row of failures began
        self._next = None  # no failure yet: due at once

    def due(self, now):
        return self._next is None or ticks_diff(now, self._next) >= 0

    def failed(self, now):
        if not self.failures:
            self._since = now
        cap = ticks_diff(now, self._since) // 2
        d = min(self._delay, max(self.first_ms, cap))
        half = d // 2
        self.wait_ms = half + random.getrandbits(24) % (d - half + 1)
        self._next = ticks_add(now, self.wait_ms)
        self._delay = min(self._delay * 2, self.max_ms)
        self.failures += 1

    def reset(self):
        self._delay = self.first_ms
        self.failures = 0
        self._next = None
