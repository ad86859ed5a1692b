"""The host's one way to talk to a MicroPython board over a serial port, built on mpremote's transport.

    with Board("/dev/ttyUSB0") as board:
        board.info()                      # {"micropython": "1.24.1", "mpy": 11014, "platform": "esp32", ...}
        board.write_file("/node/app.mpy", data)
        board.sha256("/node/app.mpy")     # computed on the board
        board.hard_reset()
        board.read_until(r"^fieldnode:.*\\n", timeout=30)

The port is opened (exclusively) by the constructor; the raw REPL is entered on first use, with a soft reset
by default (as mpremote does: a clean heap, the running program stopped, boot.py run again, main.py not).
Everything that fails raises BoardError with one line naming the problem and what to do: the port is
missing, busy or not permitted, the board does not answer as MicroPython, it timed out, it raised, the
connection was lost. Paths are board paths ("/config.json", "lib/x.mpy" is relative to the board's cwd).
Console output is returned as text with CRLF turned into LF (boards write CRLF, the Unix port LF).
"""
import codecs
import contextlib
import errno
import io
import json
import os
import re
import time

import serial
from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

from .errors import FieldnodeError

CHUNK = 512  # bytes per write step: the board compiles each step's literal, so keep it small
SERIAL_READ_TIMEOUT = 0.5  # how long one read of the port may block; the Board's timeouts are checked between
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")  # pyserial URLs (socket://, rfc2217://) do not name a device file


class BoardError(FieldnodeError):
    pass


class _Expired(Exception):
    pass


class _NoAnswer(BoardError):
    """The board did not answer in time, or not as the REPL protocol says (a BoardError to callers)."""


class _Port:
    """The pyserial object as mpremote sees it, with time limits, so that no mpremote loop can wait forever:
    `idle` seconds without a byte from the board, or past `deadline` (time.monotonic()), a read raises."""

    def __init__(self, port):
        object.__setattr__(self, "_port", port)
        object.__setattr__(self, "idle", None)
        object.__setattr__(self, "deadline", None)
        object.__setattr__(self, "_last", time.monotonic())

    def __getattr__(self, name):
        return getattr(self._port, name)

    def __setattr__(self, name, value):
        if name in ("idle", "deadline", "_last"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._port, name, value)

    def read(self, size=1):
        now = time.monotonic()
        if (self.deadline is not None and now > self.deadline) or (
                self.idle is not None and now - self._last > self.idle):
            raise _Expired()
        data = self._port.read(size)
        if data:
            object.__setattr__(self, "_last", time.monotonic())
        return data

    def limit(self, idle=None, deadline=None):
        object.__setattr__(self, "idle", idle)
        object.__setattr__(self, "deadline", deadline)
        object.__setattr__(self, "_last", time.monotonic())


# -- code run on the board (kept small: it is sent and compiled on every call) ----------------------------

_INFO = """\
import sys, json
try:
    import machine
    _m = machine.unique_id()
    _m = ':'.join('%02x' % b for b in _m) if len(_m) == 6 else None
except Exception:
    _m = None
try:
    import vboard
    _b = vboard.bench()
except ImportError:
    _b = None
_v = sys.implementation.version
print(json.dumps({"micropython": "%d.%d.%d" % _v[:3] + ("-" + _v[3] if len(_v) > 3 and _v[3] else ""),
                  "mpy": getattr(sys.implementation, "_mpy", None), "platform": sys.platform,
                  "machine": getattr(sys.implementation, "_machine", None), "mac": _m, "bench": _b}))
del _m, _b, _v
"""

_SHA256 = """\
import hashlib, binascii, json
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    b = bytearray(1024)
    m = memoryview(b)
    with f:
        while True:
            n = f.readinto(b)
            if not n:
                break
            h.update(m[:n])
    return binascii.hexlify(h.digest()).decode()
print(json.dumps([_h(p) for p in %r]))
del _h
"""

_WALK = """\
import os, json
def _w(d, out):
    try:
        entries = list(os.ilistdir(d))
    except OSError:
        return out
    for e in entries:
        p = (d if d.endswith('/') else d + '/') + e[0]
        if e[1] == 0x4000:
            _w(p, out)
        else:
            out.append(p)
    return out
print(json.dumps(_w(%r, [])))
del _w
"""

_MAKEDIRS = """\
import os
_p = ''
for _d in %r.split('/'):
    if not _d:
        continue
    _p += '/' + _d if (_p or %r) else _d
    try:
        os.mkdir(_p)
    except OSError as e:
        if e.args[0] != 17:
            raise
del _p, _d
"""

_REMOVE = """\
import os
try:
    os.remove(%r)
except OSError as e:
    if e.args[0] != 2:
        raise
"""

# rename() replaces the target on LittleFS (ESP32's default) and POSIX; FAT refuses, so remove it first there.
_COMMIT = """\
import os
try:
    os.rename(%r, %r)
except OSError:
    os.remove(%r)
    os.rename(%r, %r)
"""


def _text(data):
    return data.decode("utf-8", "replace").replace("\r\n", "\n")


def _last_line(err):
    lines = [line.strip() for line in _text(err).splitlines() if line.strip()]
    return lines[-1] if lines else "an error"


def _parent(path):
    head = path.rstrip("/").rsplit("/", 1)
    return head[0] if len(head) == 2 else ""


class Board:
    """A MicroPython board on a serial port (a context manager). See the module docstring."""

    def __init__(self, port, baudrate=115200, timeout=10, soft_reset=True):
        self.port = port
        self.baudrate = baudrate
        self.timeout = timeout
        self.soft_reset_on_enter = soft_reset
        self._transport = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._console = ""
        self._transport = self._open()

    # -- the port ---------------------------------------------------------------------------------------

    def _open(self):
        port = self.port
        if not _URL.match(port) and not os.path.exists(port):
            raise BoardError(f"no such port {port}: is the board plugged in and powered? "
                             "(list the ports: mpremote connect list, or ls /dev/ttyUSB* /dev/ttyACM*)")
        try:
            transport = SerialTransport(port, baudrate=self.baudrate, exclusive=True, timeout=SERIAL_READ_TIMEOUT)
        except TransportError:
            raise self._why_not_open() from None
        transport.serial = _Port(transport.serial)
        return transport

    def _why_not_open(self):
        port = self.port
        try:
            probe = serial.serial_for_url(port, baudrate=self.baudrate, exclusive=True)
        except (serial.SerialException, OSError) as exc:
            code, text = getattr(exc, "errno", None), str(exc)
            if code == errno.ENOENT:
                return BoardError(f"no such port {port}: is the board plugged in and powered? "
                                  "(list the ports: mpremote connect list)")
            if code in (errno.EACCES, errno.EPERM):
                return BoardError(f"no permission to open {port}: add your user to the dialout group "
                                  "(sudo usermod -aG dialout $USER, then log in again)")
            if code in (errno.EBUSY, errno.EAGAIN) or "exclusively lock" in text:
                return BoardError(f"{port} is busy: another program has it open (mpremote, screen, a serial "
                                  "monitor, another fieldnode command): close it and retry")
            if code == errno.ENOTTY or "Inappropriate ioctl" in text:
                return BoardError(f"{port} is not a serial port: check --port (mpremote connect list shows them)")
            return BoardError(f"cannot open {port}: {text.splitlines()[0] if text else exc!r}")
        probe.close()
        return BoardError(f"cannot open {port} (it opened on a second try): retry")

    def close(self):
        transport, self._transport = self._transport, None
        if transport is None:
            return
        try:
            transport.serial.limit(idle=2)
            if transport.in_raw_repl:
                transport.exit_raw_repl()  # leave the board at its friendly REPL, as mpremote does
        except (_Expired, TransportError, serial.SerialException, OSError):
            pass
        try:
            transport.close()
        except (serial.SerialException, OSError):
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- calling into mpremote, with every failure turned into one BoardError ----------------------------

    def _t(self):
        if self._transport is None:
            raise BoardError(f"the connection to {self.port} is closed: open a new Board")
        return self._transport

    def _guard(self, fn, *args, idle=None, deadline=None, **kw):
        t = self._t()
        t.serial.limit(idle=self.timeout if idle is None else idle, deadline=deadline)
        try:
            return fn(*args, **kw)
        except TransportExecError:
            raise
        except (_Expired, TransportError) as exc:
            t.in_raw_repl = False  # state unknown: the next call interrupts and re-enters the raw REPL
            if isinstance(exc, _Expired) or "timeout" in str(exc):
                raise _NoAnswer(f"the board on {self.port} did not answer within {self.timeout:g}s: press its "
                                 "RESET button (or unplug and replug it) and retry") from None
            raise _NoAnswer(f"the board on {self.port} stopped following the REPL protocol ({exc}): "
                             "reset it and retry") from None
        except serial.SerialException as exc:  # (a board-side OSError that mpremote re-raises passes through)
            t.in_raw_repl = False
            raise BoardError(f"lost the connection to {self.port} ({exc}): check the USB cable and "
                             "that no other program took the port, then retry") from None

    def _raw(self):
        t = self._t()
        if t.in_raw_repl:
            return
        deadline = time.monotonic() + self.timeout
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # mpremote prints what it got when this fails
                self._guard(t.enter_raw_repl, soft_reset=self.soft_reset_on_enter, timeout_overall=self.timeout,
                            deadline=deadline)
        except _NoAnswer:
            raise BoardError(f"no MicroPython REPL answered on {self.port} within {self.timeout:g}s: "
                             f"flash MicroPython first (fieldnode flash --port {self.port}), or press the "
                             "board's RESET button if a program holds it") from None

    def _exec(self, code, what):
        """Run code in the raw REPL; return its output (text); raise BoardError naming `what` on an exception."""
        self._raw()
        out, err = self._guard(self._t().exec_raw, code, timeout=self.timeout)
        if err:
            raise BoardError(f"{what} failed on the board at {self.port}: {_last_line(err)}")
        return _text(out)

    def _fs(self, method, *args, what, **kw):
        self._raw()
        try:
            return self._guard(getattr(self._t(), method), *args, **kw)
        except TransportExecError as exc:
            raise BoardError(f"{what} failed on the board at {self.port}: "
                             f"{_last_line(exc.error_output.encode())}") from None

    # -- the API ----------------------------------------------------------------------------------------

    def exec(self, code: str) -> str:
        """Run `code` on the board; return what it printed. BoardError if it raised."""
        return self._exec(code, "the code")

    def eval_json(self, expr: str):
        """Evaluate `expr` on the board and return it, carried as JSON."""
        out = self._exec("import json\nprint(json.dumps(%s))" % expr, "evaluating %s" % expr)
        try:
            return json.loads(out)
        except ValueError:
            raise BoardError(f"the board on {self.port} printed something other than JSON for {expr}: "
                             f"{out.strip()[:80]!r}") from None

    def info(self) -> dict:
        """{"micropython", "mpy", "platform", "machine", "mac" ("aa:bb:..", or None), "bench" (a virtual
        board's {"i2c", "bus"}, else None)}."""
        out = self._exec(_INFO, "reading the board's identity")
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BoardError(f"the board on {self.port} does not look like MicroPython (it answered "
                             f"{out.strip()[:80]!r}): flash MicroPython first (fieldnode flash --port {self.port})"
                             ) from None

    def listdir(self, path="/") -> list:
        """Names in the board's directory `path` (not recursive)."""
        try:
            return self.eval_json("__import__('os').listdir(%r)" % path)
        except BoardError as exc:
            if "ENOENT" in str(exc) or "Errno 2" in str(exc):
                raise BoardError(f"no directory {path} on the board at {self.port}") from None
            raise

    def walk(self, path="/") -> list:
        """Paths of every file under the board's directory `path`, recursively ([] if it does not exist)."""
        return json.loads(self._exec(_WALK % path, "listing %s" % path))

    def sha256(self, path) -> "str | None":
        """SHA-256 (hex) of a board file, computed on the board; None if there is no such file."""
        return self.sha256_many([path])[path]

    def sha256_many(self, paths) -> dict:
        """{path: sha256 hex or None} for many board files, in one round trip."""
        paths = list(paths)
        if not paths:
            return {}
        digests = json.loads(self._exec(_SHA256 % (paths,), "hashing files"))
        return dict(zip(paths, digests))

    def exists(self, path) -> bool:
        out = self._exec("import os\ntry:\n os.stat(%r)\n print(1)\nexcept OSError:\n print(0)" % path,
                         "checking %s" % path)
        return out.strip() == "1"

    def read_file(self, path) -> bytes:
        """The bytes of a board file."""
        try:
            return bytes(self._fs("fs_readfile", path, chunk_size=CHUNK, what="reading %s" % path))
        except OSError as exc:  # mpremote turns the board's OSError into a host OSError
            if exc.errno == errno.ENOENT:
                raise BoardError(f"no file {path} on the board at {self.port}") from None
            raise BoardError(f"reading {path} failed on the board at {self.port}: "
                             f"{os.strerror(exc.errno) if exc.errno else exc}") from None

    def write_file(self, path, data: bytes, progress=None):
        """Write a board file atomically: to path + ".tmp", then renamed over `path`; parents are made.
        `progress(done_bytes, total_bytes)` is called as the data goes out."""
        data = bytes(data)
        parent = _parent(path)
        if parent:
            self.makedirs(parent)
        tmp = path + ".tmp"
        callback = None
        if progress is not None:
            def callback(done, total):
                progress(done, total)
        try:
            self._fs("fs_writefile", tmp, data, chunk_size=CHUNK, progress_callback=callback,
                     what="writing %s" % path)
        except OSError as exc:
            hint = " (the board's filesystem is full: remove files from it)" if exc.errno == errno.ENOSPC else ""
            raise BoardError(f"writing {path} failed on the board at {self.port}: "
                             f"{os.strerror(exc.errno) if exc.errno else exc}{hint}") from None
        if progress is not None and not data:
            progress(0, 0)
        self._exec(_COMMIT % (tmp, path, path, tmp, path), "replacing %s" % path)

    def remove(self, path):
        """Remove a board file; nothing happens if it is not there."""
        self._exec(_REMOVE % path, "removing %s" % path)

    def makedirs(self, path):
        """Make a board directory and its parents (existing ones are fine)."""
        self._exec(_MAKEDIRS % (path, path.startswith("/")), "making %s" % path)

    def soft_reset(self):
        """Ctrl-D in the raw REPL: a fresh interpreter (boot.py runs, main.py does not); stays in the raw REPL."""
        t = self._t()
        with contextlib.redirect_stdout(io.StringIO()):
            self._guard(t.enter_raw_repl, soft_reset=True, timeout_overall=self.timeout,
                        deadline=time.monotonic() + self.timeout)

    def hard_reset(self):
        """machine.reset(): the board restarts and runs boot.py and main.py. The port may drop and come back
        (native USB); read_until() reconnects. Console output from here on is kept for read_until()."""
        self._raw()
        t = self._t()
        self._console = ""
        try:
            self._guard(t.exec_raw_no_follow, "import machine\nmachine.reset()", idle=2)
        except BoardError:
            pass  # the port dropped as the board reset, or the acknowledgement was lost in the reset
        t.in_raw_repl = False

    def read_until(self, pattern: str, timeout) -> str:
        """Console output up to and including the first match of the regular expression `pattern` (re.M:
        ^ and $ work per line). Output after the match is kept for the next call. Reconnects if the port
        drops (a board with native USB re-enumerates on reset)."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            text = self._console.replace("\r\n", "\n")
            m = rx.search(text)
            if m:
                self._console = text[m.end():]
                return text[:m.end()]
            left = deadline - time.monotonic()
            if left <= 0:
                tail = text.strip().splitlines()[-1:] or ["nothing"]
                raise BoardError(f"the board on {self.port} printed nothing matching {pattern!r} within "
                                 f"{timeout:g}s (last console line: {tail[0][:100]!r})")
            try:
                port = self._t().serial
                port.limit()
                port.timeout = min(left, SERIAL_READ_TIMEOUT)
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError):
                self._reconnect(deadline)
                continue
            finally:
                if self._transport is not None:
                    self._transport.serial.timeout = SERIAL_READ_TIMEOUT
            self._console += self._decoder.decode(data)

    def _reconnect(self, deadline):
        try:
            self._transport.close()
        except (serial.SerialException, OSError):
            pass
        self._transport = None
        while time.monotonic() < deadline:
            try:
                self._transport = self._open()
                return
            except BoardError:
                time.sleep(0.1)  # the device node comes back when the board's USB re-enumerates
        raise BoardError(f"{self.port} did not come back after the reset: check the USB cable and the port name")
