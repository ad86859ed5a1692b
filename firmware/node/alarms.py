"""Threshold alarms with hysteresis and debounce: pure logic, no I/O, no hardware.

Channels are 0 temperature_c, 1 humidity_rh, 2 pressure_pa (the protocol's channel numbers). Each channel has
an optional low and an optional high limit; a missing limit never alarms.

- high raises after `debounce` consecutive valid samples with value > high, and clears after `debounce`
  consecutive valid samples with value < high - hysteresis (or value < low: see jumps below);
- low raises after `debounce` consecutive samples with value < low, and clears after `debounce` consecutive
  samples with value > low + hysteresis (or value > high);
- None (an invalid reading) leaves that channel's counters as they are and makes no transition;
- a jump from above high to below low counts towards clearing high and raising low at the same time, so
  when the debounce is met both happen on the same sample, the clear first. Low and high of one channel are
  therefore never active together, whatever the hysteresis.

`update()` returns the same list object every time, cleared and refilled with the transitions of that
sample as `(channel, transition, value, limit)`; transition bit 0 is RAISED, bit 1 is HIGH (else low limit).
"""
from micropython import const

RAISED = const(1)
HIGH = const(2)
CHANNELS = ("temperature_c", "humidity_rh", "pressure_pa")


class AlarmSet:
    def __init__(self, thresholds=None):
        thresholds = thresholds or {}
        self._low = []
        self._high = []
        self._low_clear = []  # low + hysteresis, precomputed: float arithmetic allocates on the board
        self._high_clear = []  # high - hysteresis
        self._debounce = []
        for name in CHANNELS:
            spec = thresholds.get(name) or {}
            low, high, hyst = spec.get("low"), spec.get("high"), spec.get("hysteresis") or 0
            self._low.append(low)
            self._high.append(high)
            self._low_clear.append(None if low is None else low + hyst)
            self._high_clear.append(None if high is None else high - hyst)
            self._debounce.append(spec.get("debounce") or 1)
        # Consecutive samples for which the side's pending transition (raise if idle, clear if active) held.
        self._low_n = [0] * len(CHANNELS)
        self._high_n = [0] * len(CHANNELS)
        self.bits = 0
        self.events = []

    def update(self, values):
        events = self.events
        del events[:]
        for c in range(len(CHANNELS)):
            v = values[c]
            if v is None:
                continue
            # The active side goes first, so a clear is always reported before the opposite raise.
            if self.bits & (2 << (2 * c)):
                self._step_high(c, v, events)
                self._step_low(c, v, events)
            else:
                self._step_low(c, v, events)
                self._step_high(c, v, events)
        return events

    def _step_high(self, c, v, events):
        high = self._high[c]
        if high is None:
            return
        bit = 2 << (2 * c)
        active = self.bits & bit
        if active:
            low = self._low[c]
            holds = v < self._high_clear[c] or (low is not None and v < low)
        else:
            holds = v > high
        if not holds:
            self._high_n[c] = 0
            return
        n = self._high_n[c] + 1
        if n < self._debounce[c]:
            self._high_n[c] = n
            return
        self._high_n[c] = 0
        self.bits ^= bit
        events.append((c, HIGH if active else HIGH | RAISED, v, high))

    def _step_low(self, c, v, events):
        low = self._low[c]
        if low is None:
            return
        bit = 1 << (2 * c)
        active = self.bits & bit
        if active:
            high = self._high[c]
            holds = v > self._low_clear[c] or (high is not None and v > high)
        else:
            holds = v < low
        if not holds:
            self._low_n[c] = 0
            return
        n = self._low_n[c] + 1
        if n < self._debounce[c]:
            self._low_n[c] = n
            return
        self._low_n[c] = 0
        self.bits ^= bit
        events.append((c, 0 if active else RAISED, v, low))
