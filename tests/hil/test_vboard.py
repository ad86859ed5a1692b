"""`fieldnode vboard` driven by STOCK mpremote (its CLI, as a subprocess), as a technician would drive a
board: exec/run, file copy and hashing, soft and hard resets, boot.py/main.py, Ctrl-C, persistence."""
import hashlib
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from fieldnode.bench.vboard import VBoardProcess, mac_for

MPREMOTE = str(Path(sys.executable).with_name("mpremote"))
FIELDNODE = str(Path(sys.executable).with_name("fieldnode"))


def interpreters_in(folder):
    """Pids of processes whose working directory is `folder` (a vboard's interpreter runs there)."""
    folder = os.path.realpath(folder)
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "cwd") == folder:
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.fixture
def vboards():
    """start(fs, *options) -> a running `fieldnode vboard` (VBoardProcess); all stopped by pid at teardown,
    and their interpreters must be gone with them."""
    started = []

    def start(fs, *args):
        vb = VBoardProcess(fs, *args).start()
        started.append(vb)
        return vb

    yield start
    for vb in started:
        vb.stop()
    for vb in started:
        assert vb.proc.returncode == 0, "fieldnode vboard exited with %s on SIGTERM" % vb.proc.returncode
        assert not interpreters_in(vb.fs), "the vboard left its interpreter running"


def mpremote(port, *args, timeout=30, check=True):
    proc = subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace")
    return proc


class Console:
    """The board's console as a serial terminal sees it (pyserial on the port), with bounded waits."""

    def __init__(self, port):
        self.port = serial.Serial(port, 115200, timeout=0.2, exclusive=True)
        self.seen = b""

    def wait_for(self, marker, timeout=15):
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            assert time.monotonic() < deadline, "no %r on the console; got %r" % (marker, self.seen[-400:])
            self.seen += self.port.read(max(1, self.port.in_waiting))  # returns as soon as anything came
        return self.seen

    def close(self):
        self.port.close()


# main.py as the tests run it. It says it is alive over and over (pyserial drops what a port received before
# it was opened, so a one-off line could be missed) and counts its boots in boots.txt.
MAIN_LOOP = b"""\
import time
with open('boots.txt', 'a') as f:
    f.write('x')
with open('boots.txt') as f:
    boot = len(f.read())
with open('order.txt', 'a') as f:
    f.write('main ')
state = 'running'
try:
    while True:
        print('main: boot %d tick' % boot)
        time.sleep_ms(20)
except KeyboardInterrupt:
    state = 'interrupted'
    raise
"""


def test_the_port_is_the_first_line_and_the_board_looks_like_a_board(vboards, tmp_path):
    vb = vboards(tmp_path / "board")
    assert vb.port.startswith("/dev/pts/") and os.path.exists(vb.port)
    out = mpremote(vb.port, "exec", "import os, sys; print(os.getcwd(), os.listdir('/'), sys.path)").stdout
    # "/" is the board's (empty) folder, sys.path is a board's: not the repo's firmware tree
    assert out.decode().split() == ["/", "[]", "['',", "'.frozen',", "'/lib']"]
    assert b"firmware" not in out


def test_fs_cp_ls_cat_and_hash(vboards, tmp_path):
    fs = tmp_path / "board"
    vb = vboards(fs)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 20)
    module = tmp_path / "hello.py"
    module.write_text("GREETING = 'hello from /lib'\n")
    mpremote(vb.port, "fs", "cp", str(blob), ":blob.bin", "+", "fs", "mkdir", ":lib",
             "+", "fs", "cp", str(module), ":lib/hello.py")
    assert (fs / "blob.bin").read_bytes() == blob.read_bytes()  # the board's flash is the folder
    listing = mpremote(vb.port, "fs", "ls", ":").stdout.decode()
    assert "5120 blob.bin" in listing and "lib/" in listing
    assert mpremote(vb.port, "fs", "cat", ":lib/hello.py").stdout.strip() == b"GREETING = 'hello from /lib'"
    digest = mpremote(vb.port, "fs", "sha256sum", ":blob.bin").stdout.decode()
    assert hashlib.sha256(blob.read_bytes()).hexdigest() in digest
    # /lib is on the board's path, and `run` sends a local script
    script = tmp_path / "script.py"
    script.write_text("import hello\nprint(hello.GREETING)\n")
    assert mpremote(vb.port, "run", str(script)).stdout.strip() == b"hello from /lib"
    mpremote(vb.port, "fs", "cp", ":blob.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == blob.read_bytes()


def test_soft_reset_twice_in_a_row(vboards, tmp_path):
    vb = vboards(tmp_path / "board")
    out = mpremote(vb.port, "exec", "marker = 1", "soft-reset", "soft-reset",
                   "exec", "print('marker' in globals())").stdout
    assert out.strip() == b"False"  # the soft resets gave a fresh interpreter


def test_machine_reset_restarts_the_board_and_runs_main_again(vboards, tmp_path):
    fs = tmp_path / "board"
    fs.mkdir()
    (fs / "main.py").write_bytes(MAIN_LOOP)
    vb = vboards(fs)
    console = Console(vb.port)
    try:
        console.wait_for(b"main: boot 1 tick")  # power-on ran main.py
    finally:
        console.close()
    mpremote(vb.port, "reset")  # stock mpremote's hard reset: machine.reset()
    console = Console(vb.port)
    try:
        console.wait_for(b"main: boot 2 tick")
    finally:
        console.close()
    # main.py ran at power-on and after the reset; not after mpremote's soft reset into the raw REPL
    assert (fs / "boots.txt").read_text() == "xx"
    assert mpremote(vb.port, "exec", "print('back')").stdout.strip() == b"back"


def test_boot_py_then_main_py_and_ctrl_c_drops_to_the_repl(vboards, tmp_path):
    fs = tmp_path / "board"
    fs.mkdir()
    (fs / "boot.py").write_text("with open('order.txt', 'a') as f:\n    f.write('boot ')\n")
    (fs / "main.py").write_bytes(MAIN_LOOP)
    vb = vboards(fs)
    console = Console(vb.port)
    try:
        console.wait_for(b"main: boot 1 tick")
    finally:
        console.close()
    assert (fs / "order.txt").read_text() == "boot main "
    # mpremote interrupts the running main.py with Ctrl-C; `resume` keeps main.py's globals (no soft reset)
    out = mpremote(vb.port, "resume", "exec", "print(state)").stdout
    assert out.strip() == b"interrupted"


def test_ctrl_c_at_the_friendly_repl_and_in_running_code(vboards, tmp_path):
    fs = tmp_path / "board"
    fs.mkdir()
    (fs / "main.py").write_bytes(MAIN_LOOP)
    vb = vboards(fs)
    console = Console(vb.port)
    try:
        console.wait_for(b"main: boot 1 tick")
        console.port.write(b"\x03")
        console.wait_for(b"KeyboardInterrupt")
        console.wait_for(b">>> ")
        console.port.write(b"print(state)\r")
        console.wait_for(b"interrupted")
        console.port.write(b"\x03")  # at the prompt: a key, not a signal; the board stays up
        console.port.write(b"print(6 * 7)\r")
        console.wait_for(b"42")
    finally:
        console.close()
    # code started by mpremote (raw-paste mode) is interruptible as well
    proc = subprocess.Popen([MPREMOTE, "connect", vb.port, "exec", "print('spinning')\nwhile True: pass"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"spinning"
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    out = mpremote(vb.port, "resume", "exec", "print('free again')", timeout=20).stdout
    assert out.strip() == b"free again"


# An interpreter that plays one moment of the Unix port's life. It boots as _boot.py does and reaches a prompt;
# on "g" it enters the state the real one passes through on its way out of the raw REPL or after a REPL line:
# the tty still set for running code (ISIG) but no SIGINT handler (after a raw REPL the Unix port leaves
# SIGINT at its default, which kills). It stays there 0.5 s (the state's length, not a wait for anything),
# says whether input reached it meanwhile, then is at a prompt again and echoes the next two bytes.
BETWEEN_STATES = r"""
import os, select, signal, sys, termios, time

def tty(isig):
    attr = termios.tcgetattr(0)
    attr[3] = termios.ISIG if isig else 0
    termios.tcsetattr(0, termios.TCSANOW, attr)

def say(text):
    os.write(1, text.encode("latin-1"))

say("\0vboard:fs\0\0vboard:repl\0")
with open(os.environ["FIELDNODE_VBOARD_ACK"], "rb") as ack:
    ack.read(1)
tty(False)
say(">>> ")
os.read(0, 1)
signal.signal(signal.SIGINT, signal.SIG_DFL)
tty(True)
say("between states\r\n")
time.sleep(0.5)
if select.select([0], [], [], 0)[0]:
    say("input while between states\r\n")
tty(False)
got = b""
while len(got) < 2:
    got += os.read(0, 2 - len(got))
say("got %r\r\n" % got)
os.read(0, 1)
"""


def _ctrl_c_dialogue(script, state, keys, answer, vboards, tmp_path, monkeypatch):
    """Boot a vboard whose interpreter is `script` (Python), put it into `state` with "g", type `keys`, wait
    for `answer`; return everything the console showed."""
    fake = tmp_path / "micropython"
    fake.write_text("#!%s\n%s" % (sys.executable, script))
    fake.chmod(0o755)
    monkeypatch.setenv("FIELDNODE_MICROPYTHON", str(fake))
    console = Console(vboards(tmp_path / "board").port)
    try:
        console.wait_for(b">>> ")
        console.port.write(b"g")
        console.wait_for(state)
        console.port.write(keys)
        return console.wait_for(answer)
    finally:
        console.close()


def test_a_ctrl_c_between_states_waits_instead_of_killing_the_interpreter(vboards, tmp_path, monkeypatch):
    # mpremote's "interrupt, then raw REPL"
    seen = _ctrl_c_dialogue(BETWEEN_STATES, b"between states", b"\x03\x01", b"got b'\\x03\\x01'\r\n",
                            vboards, tmp_path, monkeypatch)
    assert b"hard reset" not in seen and b"input while between states" not in seen, seen


# A program that turned the interrupt off (micropython.kbd_intr(-1)): the tty set for running code, no SIGINT
# handler, for as long as it likes. It reads one byte and echoes it.
INTERRUPTS_OFF = BETWEEN_STATES.split("os.read(0, 1)\n", 1)[0] + r"""os.read(0, 1)
signal.signal(signal.SIGINT, signal.SIG_DFL)
tty(True)
say("interrupts off\r\n")
say("got %r\r\n" % os.read(0, 1))
os.read(0, 1)
"""


def test_a_ctrl_c_to_a_program_that_turned_interrupts_off_arrives_as_a_byte(vboards, tmp_path, monkeypatch):
    """The hold above is bounded: a Ctrl-C is never kept back for good, nor does it kill the interpreter."""
    seen = _ctrl_c_dialogue(INTERRUPTS_OFF, b"interrupts off", b"\x03", b"got b'\\x03'\r\n",
                            vboards, tmp_path, monkeypatch)
    assert b"hard reset" not in seen, seen


def test_files_and_mac_persist_across_a_vboard_restart(vboards, tmp_path):
    fs = tmp_path / "board"
    note = tmp_path / "note.txt"
    note.write_text("kept in flash")
    mac_code = "import machine; print(machine.unique_id().hex())"
    first = vboards(fs)
    mpremote(first.port, "fs", "cp", str(note), ":note.txt")
    mac = mpremote(first.port, "exec", mac_code).stdout.strip().decode()
    assert mac == mac_for(fs)
    assert first.stop() == 0
    second = vboards(fs)
    assert mpremote(second.port, "fs", "cat", ":note.txt").stdout == b"kept in flash"
    assert mpremote(second.port, "exec", mac_code).stdout.strip().decode() == mac
    other = vboards(tmp_path / "other", "--mac", "02:00:00:12:34:56")
    assert mpremote(other.port, "exec", mac_code).stdout.strip() == b"020000123456"


def test_the_board_reports_its_sensor_bus_and_a_bme280_answers_there(vboards, tmp_path):
    vb = vboards(tmp_path / "cold-room")
    out = mpremote(vb.port, "exec", "import vboard, json; print(json.dumps(vboard.bench()))").stdout
    host, _, port = out.decode().split('"i2c": "')[1].split('"')[0].rpartition(":")
    assert '"bus": "cold-room"' in out.decode()
    with socket.create_connection((host, int(port)), timeout=5) as s:
        name = b"any-name"  # the vboard's own bus answers under whatever name a config gives
        s.sendall(struct.pack(">BBBH", 0x4E, 0, 0, len(name)) + name)
        assert s.recv(1) == b"\x00"
        s.sendall(struct.pack(">BBBH", 0x52, 0x76, 0xD0, 1))  # BME280 chip id register
        assert s.recv(2) == b"\x00\x60"


def test_bad_options_are_one_line_errors(tmp_path):
    for args, words in ((["--mac", "zz"], "--mac"), (["--board", "esp32-devkitc"], "--board"),
                        (["--sensor-bus", "nowhere"], "--sensor-bus")):
        proc = subprocess.run([FIELDNODE, "vboard", "--fs", str(tmp_path / "b")] + args, capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.startswith("fieldnode: " + words) and proc.stderr.count("\n") == 1, proc.stderr
