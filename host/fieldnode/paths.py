"""Where the firmware tree, the fetched MicroPython libraries and the Unix port live."""
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
# Modules only the Unix port needs (e.g. the `ussl` name that umqtt.simple 1.3.4 imports).
UNIX_COMPAT = FIRMWARE / "unix"
MPYLIB = Path(os.environ.get("FIELDNODE_MPYLIB", REPO / "build" / "mpylib"))
BOARDS = REPO / "boards"


def micropython_exe():
    """The Unix-port interpreter: $FIELDNODE_MICROPYTHON, next to our Python, or on PATH."""
    env = os.environ.get("FIELDNODE_MICROPYTHON")
    if env:
        return env
    beside = Path(sys.executable).with_name("micropython")
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if not found:
        raise FileNotFoundError("micropython (Unix port) not found: run `make setup`")
    return found


def micropypath():
    """MICROPYPATH for a node on the Unix port: frozen modules (ssl, asyncio live there), firmware,
    Unix compat modules, fetched libs."""
    return os.pathsep.join([".frozen"] + [str(p) for p in (FIRMWARE, UNIX_COMPAT, MPYLIB)])
