"""`fieldnode flash` end to end: esptool as a library against `fieldnode vbootloader` (a subprocess).

The backing file starts full of old contents (0xA5), so every check can tell written, erased and untouched
flash apart.
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading

import pytest
import serial

from fieldnode import audit
from fieldnode.bench.esp_image import build_image
from fieldnode.bench.vbootloader import VBootloaderProcess
from fieldnode.cli import main
from fieldnode.flash import FlashError, flash_firmware

IMAGE_SIZE = 256 * 1024
OLD = 0xA5
OLD_SIZE = 512 * 1024
CHIPS = {  # chip -> (MicroPython offset, MAC, flash size the board reports)
    "esp32": (0x1000, "24:0a:c4:00:00:01", "4MB"),
    "esp32s3": (0x0, "7c:df:a1:00:00:02", "8MB"),
    "esp32c3": (0x0, "58:cf:79:00:00:03", "4MB"),
    "esp32c6": (0x0, "40:4c:ca:00:00:04", "8MB"),
}


class Board:
    def __init__(self, tmp_path, chip):
        self.chip = chip
        self.offset, self.mac, self.flash_size = CHIPS[chip]
        self.backing = tmp_path / ("flash-%s.bin" % chip)
        self.backing.write_bytes(bytes([OLD]) * OLD_SIZE)
        self.proc = VBootloaderProcess(chip, self.backing, mac=self.mac, log=tmp_path / "vbootloader.log")

    @property
    def url(self):
        return self.proc.url

    def flash(self):
        return self.backing.read_bytes()


@pytest.fixture
def board(tmp_path):
    started = []

    def start(chip):
        b = Board(tmp_path, chip)
        b.proc.start()
        started.append(b)
        return b

    yield start
    for b in started:
        pid = b.proc.pid
        assert b.proc.stop() == 0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.fixture
def fleet(tmp_path):
    return tmp_path / "fleet"


def firmware(tmp_path, chip, size=IMAGE_SIZE, name=None, **kw):
    path = tmp_path / (name or "%s-fw.bin" % chip)
    path.write_bytes(build_image(chip, size, **kw))
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def last_record(fleet):
    assert audit.verify(fleet) >= 1
    return audit.read(fleet)[-1]


@pytest.mark.parametrize("chip", CHIPS)
def test_flash_detects_the_chip_and_writes_at_its_offset(board, fleet, tmp_path, capsys, chip):
    b = board(chip)
    fw = firmware(tmp_path, chip)
    image = fw.read_bytes()
    code, out, err = run(capsys, "flash", "--port", b.url, "--firmware", str(fw), "--fleet", str(fleet),
                         "--node", "node-7", "--operator", "ana", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["chip"], result["offset"], result["mac"], result["flash_size"]) == \
        (chip, b.offset, b.mac, b.flash_size)
    assert result["verified"] is True and result["erased"] is False
    assert result["sha256"] == hashlib.sha256(image).hexdigest()

    flash = b.flash()
    assert flash[b.offset:b.offset + len(image)] == image
    assert flash[:b.offset] == bytes([OLD]) * b.offset                # before: untouched (ESP32: 0x0-0xfff)
    end = b.offset + len(image)
    assert flash[end:] == bytes([OLD]) * (OLD_SIZE - end)            # after the last sector: untouched

    record = last_record(fleet)
    assert (record["action"], record["result"], record["node"], record["mac"], record["operator"]) == \
        ("flash", "ok", "node-7", b.mac, "ana")
    assert record["sha256"] == {"firmware": hashlib.sha256(image).hexdigest()}
    assert record["details"]["offset"] == b.offset and record["details"]["chip"] == chip


@pytest.mark.parametrize("chip", ["esp32", "esp32c3"])
def test_erase_clears_the_rest_of_the_flash(board, fleet, tmp_path, capsys, chip):
    b = board(chip)
    fw = firmware(tmp_path, chip, size=64 * 1024)
    image = fw.read_bytes()
    code, out, err = run(capsys, "flash", "--port", b.url, "--firmware", str(fw), "--fleet", str(fleet),
                         "--erase")
    assert code == 0, err
    flash = b.flash()
    assert flash[b.offset:b.offset + len(image)] == image
    rest = flash[:b.offset] + flash[b.offset + len(image):]
    assert rest == b"\xff" * len(rest)                                 # the 0xA5 contents are gone
    assert out.startswith("flashed %s %s " % (chip, b.mac)) and "erased first" in out
    assert last_record(fleet)["details"]["erase"] is True


def test_refuses_an_image_for_another_chip(board, fleet, tmp_path, capsys):
    b = board("esp32")
    fw = firmware(tmp_path, "esp32s3")
    before = b.flash()
    code, out, err = run(capsys, "flash", "--port", b.url, "--firmware", str(fw), "--fleet", str(fleet))
    assert code == 1 and out == ""
    assert err == ("fieldnode: esp32s3-fw.bin is built for esp32s3 but the board on %s is an esp32: use the "
                   "esp32 firmware, or connect an esp32s3 board\n" % b.url)
    assert b.flash() == before
    record = last_record(fleet)
    assert (record["result"], record["mac"]) == ("failed", b.mac)
    assert record["sha256"] == {"firmware": hashlib.sha256(fw.read_bytes()).hexdigest()}
    assert "esp32s3" in record["details"]["error"]


def test_refuses_a_chip_option_that_does_not_match_the_image(board, fleet, tmp_path, capsys):
    b = board("esp32c3")
    before = b.flash()
    fw = firmware(tmp_path, "esp32c3")
    code, _, err = run(capsys, "flash", "--port", b.url, "--firmware", str(fw), "--fleet", str(fleet),
                       "--chip", "esp32")
    assert code == 1
    assert err.count("\n") == 1 and "built for esp32c3, not the esp32 given with --chip" in err
    assert b.flash() == before


def test_chip_option_names_the_wrong_board(board, fleet, tmp_path, capsys):
    b = board("esp32c3")
    fw = firmware(tmp_path, "esp32s3")
    code, _, err = run(capsys, "flash", "--port", b.url, "--firmware", str(fw), "--fleet", str(fleet),
                       "--chip", "esp32s3")
    assert code == 1
    assert err == ("fieldnode: the board on %s is an esp32c3, not the esp32s3 given with --chip: pass --chip "
                   "esp32c3 or --chip auto\n" % b.url)


@pytest.mark.parametrize("damage, problem", [
    (lambda d: b"\x7fELF" + d[4:], "first byte 0x7f, an image starts with 0xe9"),
    (lambda d: d[:40], "segment 0 (1024 bytes) runs past the end of the file"),
    (lambda d: d[:1100] + bytes([d[1100] ^ 1]) + d[1101:], "checksum"),
    (lambda d: d[:2] + bytes([d[2] ^ 1]) + d[3:], "SHA-256 digest mismatch"),     # header is not in the checksum
])
def test_refuses_an_invalid_image(board, fleet, tmp_path, capsys, damage, problem):
    b = board("esp32")
    fw = firmware(tmp_path, "esp32")
    fw.write_bytes(damage(fw.read_bytes()))
    before = b.flash()
    code, _, err = run(capsys, "flash", "--port", b.url, "--firmware", str(fw), "--fleet", str(fleet))
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("fieldnode: %s is not a valid ESP firmware image (" % fw) and problem in err
    assert b.flash() == before
    assert last_record(fleet)["result"] == "failed"


def test_missing_port(fleet, tmp_path, capsys):
    fw = firmware(tmp_path, "esp32")
    missing = tmp_path / "ttyUSB9"
    code, out, err = run(capsys, "flash", "--port", str(missing), "--firmware", str(fw), "--fleet", str(fleet))
    assert code == 1 and out == ""
    assert err == ("fieldnode: port %s not found: is the board plugged in? check the port name "
                   "(ls /dev/ttyUSB* /dev/ttyACM*)\n" % missing)
    record = last_record(fleet)
    assert record["result"] == "failed" and record["details"]["port"] == str(missing)


def test_nothing_listening(fleet, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # bound, never listening: connections are refused
        code, _, err = run(capsys, "flash", "--port", "socket://127.0.0.1:%d" % port, "--firmware",
                           str(firmware(tmp_path, "esp32")), "--fleet", str(fleet))
    assert code == 1 and "nothing is listening at socket://127.0.0.1:%d" % port in err


def test_busy_port(fleet, tmp_path, capsys):
    master, slave = os.openpty()
    name = os.ttyname(slave)
    try:
        with serial.Serial(name, exclusive=True):     # a serial monitor has the port
            code, _, err = run(capsys, "flash", "--port", name, "--firmware", str(firmware(tmp_path, "esp32")),
                               "--fleet", str(fleet))
    finally:
        os.close(master)
        os.close(slave)
    assert code == 1
    assert err == ("fieldnode: port %s is busy: close the program using it (serial monitor, mpremote, esptool, "
                   "another fieldnode) and retry\n" % name)


def test_no_bootloader_answering(fleet, tmp_path, capsys):
    """A port where something is connected but no bootloader answers (the board runs its application)."""
    listener = socket.create_server(("127.0.0.1", 0))
    conns, done = [], threading.Event()

    def silent():
        conn, _ = listener.accept()
        conns.append(conn)
        while conn.recv(4096):
            pass
        done.set()

    threading.Thread(target=silent, daemon=True).start()
    url = "socket://127.0.0.1:%d" % listener.getsockname()[1]
    try:
        code, _, err = run(capsys, "flash", "--port", url, "--firmware", str(firmware(tmp_path, "esp32")),
                           "--fleet", str(fleet), "--connect-attempts", "1")
        assert done.wait(10), "flash did not close the port"
    finally:
        listener.close()
        for c in conns:
            c.close()
    assert code == 1
    assert err == ("fieldnode: no bootloader answered on %s: put the board in download mode (hold BOOT, tap "
                   "EN/RST, release BOOT) and check that this is its port\n" % url)


def test_library_api_reports_progress(board, tmp_path):
    b = board("esp32s3")
    fw = firmware(tmp_path, "esp32s3", size=128 * 1024)
    calls = []
    result = flash_firmware(b.url, fw, progress=lambda done, total: calls.append((done, total)))
    assert result.chip == "esp32s3" and result.offset == 0 and result.verified
    assert result.bytes_written == 128 * 1024
    assert calls and calls[-1][0] == calls[-1][1] and all(d <= t for d, t in calls)
    assert b.flash()[:128 * 1024] == fw.read_bytes()
    with pytest.raises(FlashError) as info:
        flash_firmware(b.url, firmware(tmp_path, "esp32c3"))
    assert info.value.context["mac"] == b.mac and info.value.context["chip"] == "esp32s3"


def test_cli_subprocess_output_is_one_summary_line(board, fleet, tmp_path):
    b = board("esp32")
    fw = firmware(tmp_path, "esp32", size=64 * 1024)
    proc = subprocess.run([sys.executable, "-m", "fieldnode.cli", "flash", "--port", b.url, "--firmware", str(fw),
                           "--fleet", str(fleet), "--node", "node-3"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""                                   # not a tty: no progress bar, no esptool chatter
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0] == ("flashed esp32 %s (ESP32-D0WD-V3 (revision v3.0)) on %s: 65536 bytes at 0x1000, sha256 "
                        "%s, verified" % (b.mac, b.url, hashlib.sha256(fw.read_bytes()).hexdigest()[:16]))
    assert last_record(fleet)["node"] == "node-3"


def test_bad_usage_exits_2(fleet, tmp_path, capsys):
    fw = firmware(tmp_path, "esp32")
    code, _, err = run(capsys, "flash", "--port", "socket://127.0.0.1:1", "--firmware", str(fw), "--fleet",
                       str(fleet), "--baud", "12")
    assert code == 2 and err.startswith("fieldnode: --baud:")
    assert audit.read(fleet) == []                             # a usage error is not an action
