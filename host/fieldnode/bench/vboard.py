"""A virtual board: the MicroPython Unix port behind a pseudo-terminal, so that the tools a technician
points at a real board's serial port — stock mpremote, `fieldnode deploy`, provisioning — drive it
unchanged.

    fieldnode vboard --fs DIR          # prints the port (/dev/pts/N) as its first line, runs until killed
    mpremote connect /dev/pts/N fs ls

What a board does, the virtual board does:

- **Filesystem.** DIR is the board's flash: the interpreter's cwd, mounted on "/" (`open("/main.py")`,
  `os.listdir("/")`, `/lib` all land in DIR); files persist across resets and vboard restarts.
- **Boot.** boot.py then main.py from DIR, then the REPL; an exception in main.py (a Ctrl-C from the host
  too) prints its traceback and drops to the REPL, as on a board. sys.path is a board's: '', '.frozen',
  '/lib' — never the repo's firmware tree: the node runs what was deployed.
- **Resets.** The Unix port exits where a board resets. Exit code 0 (Ctrl-D, `machine.soft_reset()`,
  `sys.exit()`) is a soft reset: "MPY: soft reboot" and a new interpreter, back in the raw REPL if it was
  in it (boot.py runs, main.py does not — mpremote relies on this). Any other exit (`machine.reset()` is
  `sys.exit(3)`, a crash, a kill) is a hard reset: a line "vboard: hard reset (...)", then a friendly boot.
- **Ctrl-C** from the host interrupts running code (the vboard sends the interpreter SIGINT, which the Unix
  port raises as KeyboardInterrupt); at a prompt it is an ordinary REPL key.
- **Identity.** A stable fake MAC (locally administered, derived from DIR's path, or --mac):
  `machine.unique_id()` returns its 6 bytes as an ESP32's returns its base MAC. `machine` on the board is
  the Unix port's plus unique_id(), reset(), reset_cause().
- **Sensor.** The vboard serves its own emulated BME280 (boards/<board>.json's sensor address) on an
  I2C bridge (fieldnode.bench.i2cbus) that answers under any bus name, or uses --sensor-bus HOST:PORT.
  The node reaches it through config.json's `bench` section; the board-side module `vboard` tells the
  host what to write there: `vboard.bench()` -> {"i2c": "HOST:PORT", "bus": NAME} (fieldnode.board's
  `Board.info()["bench"]`). `import vboard` fails on a real board.
- **Network.** The host's.

Differences from a real board: console output is what the Unix port writes (print ends lines with LF, a
board's with CRLF; the REPL's own lines are CRLF on both); bytes sent while the board resets wait for the
new interpreter instead of being lost; no ROM boot messages; `os.uname()` is missing (the Unix port has
none).

Board-side helpers live in `vboard_lib/` (they run on the Unix port, never on the host).
"""
import errno
import hashlib
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
import tty
from pathlib import Path

from .. import boards, paths
from ..errors import FieldnodeError
from .bme280_emu import BME280Emulator
from .i2cbus import I2CBusServer

BOARD_LIB = Path(__file__).resolve().parent / "vboard_lib"
BOOT_SCRIPT = BOARD_LIB / "_boot.py"

READY_FS = b"\x00vboard:fs\x00"  # printed by _boot.py once "/" is the board's folder
READY_REPL = b"\x00vboard:repl\x00"  # printed by _boot.py when boot.py/main.py are done
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_BANNER = b'Type "help()" for more information.'
SOFT_REBOOT = b"MPY: soft reboot\r\n"
HARD_RESET_EXIT = 3  # what machine.reset() (and the node's Unix HAL reset()) exit with

MAX_TO_HOST = 256 * 1024  # console bytes kept while nobody reads the port; older ones are dropped, as by a UART
MAX_TO_BOARD = 64 * 1024  # host bytes buffered before the vboard stops reading the port (back-pressure)
QUICK_EXIT_S = 1.0  # an interpreter that dies this soon after starting counts towards a boot loop
BOOT_LOOP_DELAY_S = 1.0  # ... and after 3 of those in a row, restarts are spaced by this much
# How long a Ctrl-C waits for an interpreter that is between states (see _feed_board; a few ms, longer on a
# loaded machine). Past it, the running program has turned the interrupt off (micropython.kbd_intr(-1)) and
# the Ctrl-C is a key, as on a board; later ones to the same program go through at once.
INTERRUPT_HOLD_S = 1.0


class VBoardError(FieldnodeError):
    pass


def default_fs():
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "fieldnode" / "vboard"


def mac_for(fs):
    """The stable fake MAC of the board whose filesystem is `fs`: 02 (locally administered, unicast) and
    five bytes of SHA-256 over the folder's absolute path. 12 lowercase hex digits."""
    digest = hashlib.sha256(b"fieldnode vboard " + os.fsencode(os.path.realpath(fs))).digest()
    return "02" + digest[:5].hex()


def parse_mac(text):
    digits = re.sub(r"[:\-.]", "", text or "").lower()
    if not re.fullmatch(r"[0-9a-f]{12}", digits):
        raise VBoardError(f"--mac: {text!r} is not a MAC address: give 6 bytes in hex, e.g. 02:00:00:12:34:56")
    return digits


def parse_host_port(text, option="--sensor-bus"):
    host, sep, port = (text or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise VBoardError(f"{option}: expected HOST:PORT of a running bench sensor bus, got {text!r}")
    return host, int(port)


class _OneBusServer(I2CBusServer):
    """The vboard's own sensor bridge: a single bus that answers whatever name the node's config gives."""

    def __init__(self, name):
        super().__init__()
        self._only = super().bus(name)

    def bus(self, name):
        return self._only


def _board_tty(fd):
    """The interpreter's side of the pty: bytes pass untouched (no echo, no CR/LF mapping, no XON/XOFF, no
    signal keys). Returns the (executing, prompt) attribute lists: the Unix port itself switches to raw mode
    (lflag 0) at its prompts and back to the first while it executes, so ISIG in lflag tells the vboard that
    code runs (the key itself is disabled: the vboard turns a host's Ctrl-C into SIGINT, see _feed_board)."""
    attr = termios.tcgetattr(fd)
    attr[0] = 0  # iflag
    attr[1] = 0  # oflag
    attr[3] = termios.ISIG | termios.NOFLSH  # lflag: no ICANON/ECHO/IEXTEN
    cc = attr[6]
    for name in ("VINTR", "VQUIT", "VSUSP", "VDSUSP", "VLNEXT", "VDISCARD"):
        if hasattr(termios, name):
            cc[getattr(termios, name)] = 0  # _POSIX_VDISABLE
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, attr)
    prompt = list(attr)
    prompt[3] = 0
    return attr, prompt


class _RawPaste:
    """The Unix port runs raw-paste code (mpremote's and fieldnode.board's way to execute) without switching
    its terminal out of raw mode, so Ctrl-C could not interrupt it, unlike on a board. Watching the board's
    side of the protocol -- "R\x01" (paste accepted), \x04 (all code received), then \x04 ... \x04 (end of
    output, end of error output) -- tells when that code runs; the vboard switches the terminal meanwhile."""

    def __init__(self):
        self.state = "idle"
        self._eots = 0
        self._last = b""

    def feed(self, data):
        """Returns "run" when the pasted code starts, "prompt" when it has finished, else None."""
        action = None
        if self.state == "idle":
            if b"R\x01" in self._last + data:
                self.state = "paste"
                data = (self._last + data).split(b"R\x01", 1)[1]
            else:
                self._last = data[-1:]
                return None
        for i, byte in enumerate(data):
            if byte != 4:
                continue
            if self.state == "paste":
                self.state, self._eots, action = "run", 0, "run"
            else:
                self._eots += 1
                if self._eots == 2:
                    self.state, self._last = "idle", b""
                    rest = self.feed(data[i + 1:])
                    return "prompt" if rest is None else rest
        self._last = data[-1:]
        return action


class _Console:
    """The interpreter's output on its way to the host: strips _boot.py's markers (noting them), hides the
    friendly banner when the board restarts into the raw REPL, and tracks whether the REPL is in raw mode.
    Once the REPL is up (`passthrough`), bytes go through untouched (binary protocols, such as mpremote's
    mount, included)."""

    def __init__(self, into_raw):
        self.into_raw = into_raw
        self.raw = into_raw
        self.fs_ready = False
        self.repl_markers = 0
        self.passthrough = False
        self._swallow = False
        self._held = b""
        self._tail = b""

    def feed(self, data):
        data = self._held + data
        self._held = b""
        if self.passthrough and not self._swallow:
            self._track(data)
            return data
        out = bytearray()
        while data:
            if self._swallow:  # the friendly banner of an interpreter on its way back into the raw REPL
                i = data.find(b">>> ")
                if i < 0:
                    keep = _partial_suffix(data, b">>> ")
                    self._held = data[len(data) - keep:]
                    break
                data = data[i + 4:]
                self._swallow = False
                continue
            hits = [(data.find(m), m) for m in (READY_FS, READY_REPL)]
            hits = [(i, m) for i, m in hits if i >= 0]
            if not hits:
                keep = max(_partial_suffix(data, READY_FS), _partial_suffix(data, READY_REPL))
                out += data[:len(data) - keep]
                self._held = data[len(data) - keep:]
                break
            i, marker = min(hits)
            out += data[:i]
            data = data[i + len(marker):]
            if marker == READY_FS:
                self.fs_ready = True
            else:
                self.repl_markers += 1
                if self.repl_markers == 1 and self.into_raw:
                    self._swallow = True
        self._track(bytes(out))
        return bytes(out)

    def flush(self):
        held, self._held = self._held, b""
        return b"" if self._swallow else held

    def _track(self, out):
        text = self._tail + out
        raw_at, friendly_at = text.rfind(RAW_BANNER), text.rfind(FRIENDLY_BANNER)
        if raw_at >= 0 or friendly_at >= 0:
            self.raw = raw_at > friendly_at
        self._tail = text[-64:]


def catches_sigint(pid):
    """Whether process `pid` has a handler installed for SIGINT (Linux: SigCgt in /proc/PID/status). True
    where that cannot be read, so that a Ctrl-C is never held back for good."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True


def _partial_suffix(data, marker):
    """Length of the longest end of `data` that is a proper beginning of `marker`."""
    for n in range(min(len(marker) - 1, len(data)), 0, -1):
        if data.endswith(marker[:n]):
            return n
    return 0


class VirtualBoard:
    """One virtual board. `start()` makes the port and powers the board on; `serve()` runs until `stop()`
    (thread-safe, signal-safe) is called; `close()` releases everything."""

    def __init__(self, fs, board="unix", sensor_bus=None, bus=None, mac=None, heapsize="512k", log=None):
        self.fs = Path(fs).resolve()
        self.board = boards.load(board)
        if self.board["platform"] != "unix":
            raise VBoardError(f"--board {board}: the virtual board runs the MicroPython Unix port; pass a "
                              "unix-platform board (--board unix)")
        self.mac = parse_mac(mac) if mac else mac_for(self.fs)
        self.bus_name = bus or re.sub(r"[^A-Za-z0-9_-]", "-", self.fs.name)[:32] or "vboard"
        self.sensor_bus = parse_host_port(sensor_bus) if sensor_bus else None
        self.heapsize = heapsize
        self.log = log or (lambda text: None)
        self.trace = bool(os.environ.get("FIELDNODE_VBOARD_TRACE"))
        self.port = None
        self.sensor = None
        self.bus_server = None
        self.proc = None
        self.boots = 0
        self._master = self._slave = None  # the host's side
        self._child_master = self._child_slave = self._pidfd = None
        self._console = None
        self._to_host = bytearray()
        self._to_board = bytearray()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._stopping = False
        self._gate = "closed"  # host bytes go to the interpreter only when "open"; "prompt": until its REPL is up
        self._interrupt_held = False  # a Ctrl-C waits for the interpreter to be able to take it (_feed_board)
        self._held_since = None  # when the Ctrl-C now waiting began to wait
        self._intr_off_pid = None  # the interpreter that took a Ctrl-C as a key after the wait (kbd_intr(-1))
        self._acks = 0
        self._tmp = None
        self._ack_fd = None
        self._restart_at = None
        self._next_mode = ("friendly", "power-on")
        self._quick_exits = 0
        self._started_at = 0.0

    # -- life cycle -----------------------------------------------------------------------------------

    @property
    def bench(self):
        host, port = self.sensor_bus or self.bus_server.address
        return {"i2c": "%s:%d" % (host, port), "bus": self.bus_name}

    def start(self):
        try:
            self.fs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VBoardError(f"--fs {self.fs}: cannot create the board's folder ({exc.strerror})") from None
        if not os.access(self.fs, os.W_OK):
            raise VBoardError(f"--fs {self.fs}: not writable: pick a folder you own")
        if self.sensor_bus is None:
            self.sensor = BME280Emulator()
            self.bus_server = _OneBusServer(self.bus_name).start()
            self.bus_server.bus(self.bus_name).attach(self.board["sensor"]["address"], self.sensor)
        self._tmp = tempfile.mkdtemp(prefix="fieldnode-vboard-")
        self._ack_path = os.path.join(self._tmp, "ack")
        os.mkfifo(self._ack_path, 0o600)
        self._ack_fd = os.open(self._ack_path, os.O_RDWR | os.O_NONBLOCK)  # ours stays open: no open blocks
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # until a client (pyserial) sets its own modes
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._spawn("friendly", "power-on")
        return self

    def stop(self):
        """Ask serve() to return (from any thread or a signal handler)."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def close(self):
        self._kill_child()
        for fd in (self._master, self._slave, self._wake_r, self._wake_w, self._ack_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = self._wake_r = self._wake_w = self._ack_fd = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        if self.bus_server is not None:
            self.bus_server.stop()
            self.bus_server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- the interpreter ------------------------------------------------------------------------------

    def _spawn(self, mode, cause):
        master, slave = pty.openpty()
        self._tty_modes = dict(zip(("run", "prompt"), _board_tty(slave)))
        self._paste = _RawPaste()
        self._interrupt_held = False
        self._held_since = None
        os.set_blocking(master, False)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "MICROPYPATH": ".frozen",
            "FIELDNODE_VBOARD_FS": str(self.fs),
            "FIELDNODE_VBOARD_ACK": self._ack_path,
            "FIELDNODE_VBOARD_COMPAT": str(paths.UNIX_COMPAT),
            "FIELDNODE_VBOARD_MODE": mode,
            "FIELDNODE_VBOARD_MAC": self.mac,
            "FIELDNODE_VBOARD_CAUSE": {"power-on": "1", "hard": "2", "soft": "5"}[cause],
            "FIELDNODE_VBOARD_I2C": self.bench["i2c"],
            "FIELDNODE_VBOARD_BUS": self.bus_name,
        }
        argv = [paths.micropython_exe(), "-X", "heapsize=" + self.heapsize, "-i", str(BOOT_SCRIPT)]
        self.proc = subprocess.Popen(argv, cwd=self.fs, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        self._child_master, self._child_slave = master, slave
        try:
            self._pidfd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            self._pidfd = None  # older kernels: serve() polls instead
        self._console = _Console(into_raw=(mode == "raw"))
        self._gate, self._acks = "closed", 0
        try:
            while os.read(self._ack_fd, 64):  # acknowledgements the previous interpreter did not take
                pass
        except BlockingIOError:
            pass
        if mode == "raw":
            os.write(master, b"\x01")  # read by the new REPL once boot.py is done: back into the raw REPL
        self.boots += 1
        self._started_at = time.monotonic()

    def _reap(self):
        """The interpreter has exited: drain its last output, then reset the way its exit says."""
        code = self.proc.wait()
        self._trace("exit", code)
        self._drain_child()
        self._emit(self._console.flush())
        raw = self._console.raw
        self._close_child()
        if code == 0:
            self._emit(SOFT_REBOOT)
            mode, cause = ("raw" if raw else "friendly"), "soft"
        else:
            if code == HARD_RESET_EXIT:
                why = "machine.reset"
            elif code < 0:
                why = "the interpreter was killed by signal %d" % -code
            else:
                why = "the interpreter exited with code %d" % code
            self._emit(b"\r\nvboard: hard reset (%s)\r\n" % why.encode())
            mode, cause = "friendly", "hard"
        quick = code != 0 and time.monotonic() - self._started_at < QUICK_EXIT_S
        self._quick_exits = self._quick_exits + 1 if quick else 0
        self._next_mode = (mode, cause)
        if self._quick_exits >= 3:
            if self._quick_exits == 3:
                self.log("vboard: the interpreter keeps dying at boot (exit code %d); retrying every %gs"
                         % (code, BOOT_LOOP_DELAY_S))
            self._restart_at = time.monotonic() + BOOT_LOOP_DELAY_S
        else:
            self._spawn(mode, cause)

    def _drain_child(self):
        while True:
            try:
                data = os.read(self._child_master, 65536)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self._emit(self._console.feed(data))
            self._follow_boot()

    def _close_child(self):
        for fd in (self._child_master, self._child_slave, self._pidfd):
            if fd is not None:
                os.close(fd)
        self._child_master = self._child_slave = self._pidfd = None
        self.proc = None
        self._gate = "closed"

    def _kill_child(self):
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(3)
        self._close_child()

    # -- the relay ------------------------------------------------------------------------------------

    def _emit(self, data):
        if data:
            self._to_host += data
            if len(self._to_host) > MAX_TO_HOST:  # nobody is reading the port: drop the oldest output
                del self._to_host[:len(self._to_host) - MAX_TO_HOST]

    def serve(self):
        """Relay between the port and the interpreter until stop(); restart the interpreter on resets."""
        while not self._stopping:
            child = self._child_master
            readers = [self._wake_r]
            if len(self._to_board) < MAX_TO_BOARD:
                readers.append(self._master)
            if child is not None:
                readers.append(child)
                if self._pidfd is not None:
                    readers.append(self._pidfd)
            writers = []
            if self._to_host:
                writers.append(self._master)
            if child is not None and self._to_board and self._gate == "open" and not self._interrupt_held:
                writers.append(child)
            timeout = None
            if child is not None and self._pidfd is None:
                timeout = 0.05
            if self._gate == "prompt" or self._interrupt_held:
                timeout = 0.002  # the interpreter is a moment away from its prompt
            if self._restart_at is not None:
                timeout = max(0.0, self._restart_at - time.monotonic())
            try:
                readable, writable, _ = select.select(readers, writers, [], timeout)
            except InterruptedError:
                continue
            if self._wake_r in readable:
                try:
                    os.read(self._wake_r, 64)
                except BlockingIOError:
                    pass
            if self._master in readable:
                self._read_host()
            if child is not None and child in readable:
                self._read_child()
            if self._master in writable:
                self._write(self._master, self._to_host)
            if child is not None and self._child_master is not None and (
                    child in writable or (self._interrupt_held and self._gate == "open")):
                self._feed_board()
            if self.proc is not None and self.proc.poll() is not None:
                self._reap()
            elif self._gate == "prompt" and termios.tcgetattr(self._child_slave)[3] == 0:
                self._gate = "open"  # the REPL switched its terminal to raw: a Ctrl-C is a key now
                self._console.passthrough = True
            if self._restart_at is not None and time.monotonic() >= self._restart_at:
                self._restart_at = None
                self._spawn(*self._next_mode)

    def _read_host(self):
        try:
            data = os.read(self._master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno == errno.EIO:
                return
            raise
        self._to_board += data
        self._trace("host ->", data)

    def _trace(self, what, data):
        if self.trace:
            self.log("vboard trace: %.3f pid %s %s %r"
                     % (time.monotonic(), self.proc and self.proc.pid, what, data))

    def _read_child(self):
        try:
            data = os.read(self._child_master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # the interpreter is gone; _reap() follows
                return
            raise
        self._trace("board ->", data)
        mode = self._paste.feed(data)
        if mode:
            termios.tcsetattr(self._child_slave, termios.TCSANOW, self._tty_modes[mode])
        self._emit(self._console.feed(data))
        self._follow_boot()

    def _follow_boot(self):
        console = self._console
        if self._gate == "closed" and console.fs_ready and not console.repl_markers:
            self._gate = "open"
        while self._acks < console.repl_markers:  # _boot.py is done: hold the host's bytes, let it end
            self._gate = "prompt"
            os.write(self._ack_fd, b"k")
            self._acks += 1

    def _feed_board(self):
        """The host's bytes to the interpreter. A Ctrl-C while code runs is an interrupt, as a board's UART
        handler makes it: SIGINT (which the Unix port raises as KeyboardInterrupt), sent here rather than by
        the terminal so that it reaches the interpreter before anything that follows; at a prompt it is a key.
        Between the two (the tty still set for running code, but the Unix port past or not yet at the point
        where it handles SIGINT, e.g. on its way out of the raw REPL) a SIGINT would kill it: the Ctrl-C and
        what follows wait until it is one or the other -- for INTERRUPT_HOLD_S at most: a program that turned
        the interrupt off (micropython.kbd_intr(-1)) stays in that state, and gets the Ctrl-C as a byte (and
        any further ones at once)."""
        buf = self._to_board
        self._interrupt_held = False
        while buf and self._gate == "open":
            i = buf.find(b"\x03")
            if i != 0:
                end = len(buf) if i < 0 else i
                n = self._write(self._child_master, buf, end)
                if n < end:
                    return
                continue
            pid = self.proc.pid
            if not termios.tcgetattr(self._child_slave)[3] & termios.ISIG:  # at a prompt: a key
                self._intr_off_pid = None  # the Unix port turns the interrupt on again for the next code
                if not self._write(self._child_master, buf, 1):
                    return
            elif catches_sigint(pid):
                self._intr_off_pid = None
                self._trace("interrupt", pid)
                os.kill(pid, signal.SIGINT)
                del buf[:1]
            else:
                now = time.monotonic()
                if self._held_since is None:
                    self._held_since = now
                if now - self._held_since < INTERRUPT_HOLD_S and pid != self._intr_off_pid:
                    self._interrupt_held = True
                    return
                # interrupts are off: the byte is data (VINTR is disabled on this tty, so it raises nothing)
                self._trace("ctrl-c as data", pid)
                if not self._write(self._child_master, buf, 1):
                    return
                self._intr_off_pid = pid
            self._held_since = None

    @staticmethod
    def _write(fd, buf, end=None):
        """Write buf[:end] (all of it by default), drop what went out; return how many bytes that was."""
        try:
            n = os.write(fd, buf if end is None else buf[:end])
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno == errno.EIO:
                return 0
            raise
        del buf[:n]
        return n


def run(fs, board="unix", sensor_bus=None, bus=None, mac=None, heapsize="512k", out=None, err=None):
    """`fieldnode vboard`: print the port as the first line of `out`, serve until SIGTERM/SIGINT/SIGHUP."""
    out = out or sys.stdout
    err = err or sys.stderr
    vb = VirtualBoard(fs, board=board, sensor_bus=sensor_bus, bus=bus, mac=mac, heapsize=heapsize,
                      log=lambda text: print(text, file=err, flush=True))
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        previous[sig] = signal.signal(sig, lambda *_: vb.stop())
    try:
        vb.start()
        print(vb.port, file=out, flush=True)
        mac = ":".join(vb.mac[i:i + 2] for i in range(0, 12, 2))
        bench = vb.bench
        print(f"vboard: port {vb.port}, filesystem {vb.fs}, MAC {mac}, sensor bus {bench['i2c']} "
              f"(bus {bench['bus']}{', served here' if vb.bus_server else ''}); stop with Ctrl-C or SIGTERM",
              file=err, flush=True)
        vb.serve()
    finally:
        vb.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class VBoardProcess:
    """`fieldnode vboard` as a child process (tests, bench scripts): `.port` once started, `.stop()` by pid."""

    def __init__(self, fs, *args, start_timeout=15.0):
        self.fs = Path(fs)
        self.args = list(args)
        self.start_timeout = start_timeout
        self.proc = None
        self.port = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self):
        exe = Path(sys.executable).with_name("fieldnode")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fieldnode.cli"]
        self.proc = subprocess.Popen(cmd + ["vboard", "--fs", str(self.fs)] + self.args,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            self.port = self._first_line()
        except BaseException:
            self.stop()
            raise
        return self

    def _first_line(self):
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.start_timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                raise VBoardError(f"fieldnode vboard printed no port within {self.start_timeout:g}s")
            chunk = os.read(fd, 1)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace").strip()
                raise VBoardError(f"fieldnode vboard exited ({self.proc.wait()}): {err}")
            line += chunk
        return line.decode().strip()

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL if it does not exit; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
