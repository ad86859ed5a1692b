"""fieldnode.board.Board against a virtual board (and against ports where no MicroPython answers): the file
API, resets, and the one-line errors a technician gets in the field."""
import os
import pty
import threading
import time
import tty

import pytest

from fieldnode.bench.vboard import VBoardProcess, mac_for
from fieldnode.board import Board, BoardError


@pytest.fixture(scope="module")
def vboard(tmp_path_factory):
    fs = tmp_path_factory.mktemp("board")
    (fs / "main.py").write_text("print('main: up')\n")
    vb = VBoardProcess(fs).start()
    yield vb
    assert vb.stop() == 0


def test_info_files_and_hashes(vboard):
    with Board(vboard.port) as board:
        info = board.info()
        assert info["platform"] == "linux" and info["micropython"].startswith("1.")
        assert isinstance(info["mpy"], int) and info["mpy"] & 0xFF == 6
        assert info["mac"] == ":".join(mac_for(vboard.fs)[i:i + 2] for i in range(0, 12, 2))
        assert info["bench"]["i2c"].startswith("127.0.0.1:")
        data = bytes(range(256)) * 9 + b"tail"
        board.write_file("/data/deep/blob.bin", data)  # parents are made
        assert (vboard.fs / "data" / "deep" / "blob.bin").read_bytes() == data
        assert board.listdir("/data/deep") == ["blob.bin"]  # no .tmp left behind
        assert board.read_file("/data/deep/blob.bin") == data
        import hashlib
        assert board.sha256("/data/deep/blob.bin") == hashlib.sha256(data).hexdigest()
        board.write_file("/data/deep/blob.bin", b"replaced")  # over an existing file
        assert board.read_file("/data/deep/blob.bin") == b"replaced"
        assert board.sha256("/data/nothing") is None
        assert board.walk("/data") == ["/data/deep/blob.bin"]
        board.remove("/data/deep/blob.bin")
        board.remove("/data/deep/blob.bin")  # absent: fine
        assert board.exists("/data/deep") and not board.exists("/data/deep/blob.bin")
        assert board.exec("print(6 * 7)") == "42\n"
        assert board.eval_json("{'a': [1, 2]}") == {"a": [1, 2]}
        with pytest.raises(BoardError, match=r"^the code failed on the board at .*: ZeroDivisionError"):
            board.exec("1 / 0")
        with pytest.raises(BoardError, match=r"^no file /nope on the board"):
            board.read_file("/nope")


def test_soft_reset_hard_reset_and_the_console(vboard):
    with Board(vboard.port) as board:
        board.exec("kept = 1")
        board.soft_reset()
        board.soft_reset()
        assert board.exec("print('kept' in globals())") == "False\n"
        board.hard_reset()
        out = board.read_until(r"^main: up$", timeout=15)  # boot runs main.py again
        assert "vboard: hard reset (machine.reset)" in out
        assert board.exec("print('back')") == "back\n"


def test_a_stuck_board_times_out_in_one_line_and_the_next_call_recovers(vboard):
    with Board(vboard.port, timeout=1) as board:
        started = time.monotonic()
        with pytest.raises(BoardError, match=r"did not answer within 1s: press its RESET button"):
            board.exec("while True:\n pass")
        assert time.monotonic() - started < 5
        assert board.exec("print('recovered')") == "recovered\n"  # Ctrl-C, raw REPL again


def test_missing_and_busy_ports(vboard):
    with pytest.raises(BoardError, match=r"^no such port /dev/ttyUSB99: is the board plugged in"):
        Board("/dev/ttyUSB99")
    with Board(vboard.port):
        with pytest.raises(BoardError, match=r"is busy: another program has it open") as err:
            Board(vboard.port)
    assert "\n" not in str(err.value)


@pytest.fixture
def silent_port():
    """A serial port with something behind it that is not MicroPython: it never answers, or it chatters."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    def chatter():
        while not stop.is_set():
            try:
                os.write(master, b"$GPGGA,not,micropython*47\r\n")  # blocks while the reader is behind
            except OSError:
                return

    yield os.ttyname(slave), lambda: threading.Thread(target=chatter, daemon=True).start()
    stop.set()
    os.close(slave)
    os.close(master)


def test_a_port_without_micropython_says_flash_micropython_first(silent_port):
    port, start_chatter = silent_port
    for _ in ("silent", "chattering"):
        started = time.monotonic()
        with Board(port, timeout=1) as board:
            with pytest.raises(BoardError, match=r"^no MicroPython REPL answered on .* within 1s: flash "
                                                 r"MicroPython first \(fieldnode flash --port "):
                board.info()
        assert time.monotonic() - started < 5
        start_chatter()
