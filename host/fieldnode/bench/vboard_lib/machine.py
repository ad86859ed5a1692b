# Runs on the virtual board only (fieldnode vboard): the Unix port's machine module plus what an ESP32's
# has and the host needs -- unique_id() (the board's fake MAC, 6 bytes, like an ESP32's base MAC),
# reset() (a hard reset: the interpreter exits with code 3 and the vboard restarts it) and reset_cause().
import os
import sys

from umachine import *  # noqa: F401,F403

PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5

_MAC = os.getenv("FIELDNODE_VBOARD_MAC") or "020000000000"
_CAUSE = int(os.getenv("FIELDNODE_VBOARD_CAUSE") or PWRON_RESET)


def unique_id():
    return bytes(int(_MAC[i:i + 2], 16) for i in range(0, 12, 2))


def reset():
    sys.exit(3)


def reset_cause():
    return _CAUSE
