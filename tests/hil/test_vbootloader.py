"""Stock esptool (its CLI, as a subprocess) against `fieldnode vbootloader` (a subprocess, stopped by pid).

The emulated chip reports its real flash size (4 or 8 MB) while the backing file holds only what was written;
every check of flash contents reads the backing file *and* goes through esptool.
"""
import os
import re
import subprocess
import sys

import pytest

from fieldnode.bench.esp_image import build_image
from fieldnode.bench.vbootloader import VBootloaderError, VBootloaderProcess


ESPTOOL_TIMEOUT = 60
IMAGE_SIZE = 128 * 1024
# chip -> (what esptool calls it, MicroPython offset, MAC we give it, JEDEC id esptool should print, size)
CHIPS = {
    "esp32": ("ESP32", 0x1000, "24:0a:c4:12:34:56", "ef", "4016", "4MB"),
    "esp32s3": ("ESP32-S3", 0x0, "7c:df:a1:00:11:22", "ef", "4017", "8MB"),
    "esp32c3": ("ESP32-C3", 0x0, "58:cf:79:ab:cd:ef", "c8", "4016", "4MB"),
}


def pid_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def esptool(url, *args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "esptool", "--port", url, *args], capture_output=True,
                          text=True, timeout=ESPTOOL_TIMEOUT)
    out = proc.stdout + proc.stderr
    if ok:
        assert proc.returncode == 0, "esptool %s failed (%d):\n%s" % (" ".join(args), proc.returncode, out)
    return proc.returncode, out


@pytest.fixture
def board(tmp_path):
    """start(chip, **options) -> a running VBootloaderProcess; all are stopped (by pid) at teardown."""
    started = []

    def start(chip, **options):
        vb = VBootloaderProcess(chip, options.pop("image", tmp_path / ("flash-%s.bin" % chip)),
                                mac=options.pop("mac", CHIPS[chip][2]), log=tmp_path / "vbootloader.log",
                                **options)
        started.append(vb.start())
        return vb

    yield start
    for vb in started:
        pid = vb.pid
        assert vb.stop() == 0, "vbootloader exited badly; log:\n" + (tmp_path / "vbootloader.log").read_text()
        assert not pid_exists(pid)


def last_mac(out):
    macs = re.findall(r"^MAC:\s+(\S+)", out, re.M)
    assert macs, out
    return macs[-1]


@pytest.mark.parametrize("chip", CHIPS)
def test_chip_id(board, chip):
    name, _, mac, *_ = CHIPS[chip]
    _, out = esptool(board(chip).url, "chip-id")
    assert "Detecting chip type... %s\n" % name in out
    assert re.search(r"^Chip type:\s+%s[- ]" % re.escape(name), out, re.M), out
    assert "Stub flasher running." in out
    # none of these chips has a chip id register: esptool falls back to the eFuse MAC
    assert last_mac(out) == mac


@pytest.mark.parametrize("chip", CHIPS)
def test_read_mac(board, chip):
    _, out = esptool(board(chip).url, "read-mac")
    assert last_mac(out) == CHIPS[chip][2]


def test_mac_defaults_differ_per_image(board, tmp_path):
    one = last_mac(esptool(board("esp32", image=tmp_path / "a.bin", mac=None).url, "read-mac")[1])
    two = last_mac(esptool(board("esp32", image=tmp_path / "b.bin", mac=None).url, "read-mac")[1])
    assert one != two and one.startswith("24:0a:c4:") and two.startswith("24:0a:c4:")


@pytest.mark.parametrize("chip", CHIPS)
def test_flash_id(board, chip):
    _, _, _, maker, device, size = CHIPS[chip]
    _, out = esptool(board(chip).url, "flash-id")
    assert "Manufacturer: %s" % maker in out
    assert "Device: %s" % device in out
    assert "Detected flash size: %s" % size in out


def test_flash_size_option(board):
    _, out = esptool(board("esp32", flash_size="16MB").url, "flash-id")
    assert "Device: 4018" in out and "Detected flash size: 16MB" in out


@pytest.mark.parametrize("chip", CHIPS)
def test_write_verify_read(board, chip, tmp_path):
    offset = CHIPS[chip][1]
    image = build_image(chip, IMAGE_SIZE, seed=3)
    (tmp_path / "fw.bin").write_bytes(image)
    vb = board(chip)
    _, out = esptool(vb.url, "write-flash", hex(offset), str(tmp_path / "fw.bin"))
    assert "compressed" in out and "Hash of data verified." in out

    backing = (tmp_path / ("flash-%s.bin" % chip)).read_bytes()
    assert backing[offset:] == image                      # the file is the flash
    assert backing[:offset] == b"\xff" * offset           # before the image: still erased

    esptool(vb.url, "read-flash", hex(offset), hex(len(image)), str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == image

    _, out = esptool(vb.url, "verify-flash", hex(offset), str(tmp_path / "fw.bin"))
    assert "Verification successful (digest matched)." in out


@pytest.mark.parametrize("chip", CHIPS)
def test_verify_flash_fails_on_a_corrupted_region(board, chip, tmp_path):
    offset = CHIPS[chip][1]
    image = build_image(chip, 32 * 1024, seed=4)
    (tmp_path / "fw.bin").write_bytes(image)
    backing = tmp_path / ("flash-%s.bin" % chip)
    vb = board(chip)
    esptool(vb.url, "write-flash", hex(offset), str(tmp_path / "fw.bin"))
    bad = offset + 0x1234
    with open(backing, "r+b") as f:                      # a bit flips in the flash chip
        f.seek(bad)
        f.write(bytes([image[bad - offset] ^ 0x10]))
    rc, out = esptool(vb.url, "verify-flash", "--diff", hex(offset), str(tmp_path / "fw.bin"), ok=False)
    assert rc != 0
    assert "Verification failed: 1 differences, first at %#010x" % bad in out


@pytest.mark.parametrize("chip", CHIPS)
def test_erase_flash(board, chip, tmp_path):
    backing = tmp_path / ("flash-%s.bin" % chip)
    backing.write_bytes(bytes(range(256)) * 1024)         # 256 KiB of old contents
    vb = board(chip)
    _, out = esptool(vb.url, "erase-flash")
    assert "Flash memory erased successfully" in out
    assert backing.read_bytes() == b""                    # all of it erased
    esptool(vb.url, "read-flash", "0x3f000", "0x2000", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == b"\xff" * 0x2000


def test_write_keeps_other_sectors(board, tmp_path):
    """Only the sectors the image covers are erased; NOR contents elsewhere survive."""
    backing = tmp_path / "flash-esp32s3.bin"
    old = bytes([0xA5]) * 0x20000
    backing.write_bytes(old)
    image = build_image("esp32s3", 0x5000, seed=5)       # 5 sectors at 0x8000
    (tmp_path / "fw.bin").write_bytes(image)
    esptool(board("esp32s3").url, "write-flash", "0x8000", str(tmp_path / "fw.bin"))
    now = backing.read_bytes()
    assert now[:0x8000] == old[:0x8000] and now[0xD000:] == old[0xD000:]
    assert now[0x8000:0xD000] == image


@pytest.mark.parametrize("chip", ["esp32", "esp32c3"])
def test_rom_loader_without_stub(board, chip, tmp_path):
    """--no-stub: the ROM's own commands (uncompressed FLASH_DATA, READ_FLASH_SLOW, hex MD5); ESP32's ROM
    takes 4-word FLASH_BEGIN parameters, the C3's 5."""
    offset = CHIPS[chip][1]
    image = build_image(chip, 16 * 1024, seed=6)
    (tmp_path / "fw.bin").write_bytes(image)
    vb = board(chip)
    _, out = esptool(vb.url, "--no-stub", "write-flash", hex(offset), str(tmp_path / "fw.bin"))
    assert "Stub flasher running." not in out and "Hash of data verified." in out
    assert (tmp_path / ("flash-%s.bin" % chip)).read_bytes()[offset:offset + len(image)] == image
    _, out = esptool(vb.url, "--no-stub", "verify-flash", hex(offset), str(tmp_path / "fw.bin"))
    assert "Verification successful" in out
    esptool(vb.url, "--no-stub", "read-flash", hex(offset), "0x400", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == image[:0x400]


def test_refuses_an_image_larger_than_the_flash(tmp_path):
    image = tmp_path / "big.bin"
    image.write_bytes(b"\xff" * (2 << 20) + b"\x00")
    vb = VBootloaderProcess("esp32", image, flash_size="2MB", log=tmp_path / "vb.log")
    with pytest.raises(VBootloaderError, match="did not start"):
        vb.start()
    assert vb.proc.returncode == 1
    log = (tmp_path / "vb.log").read_text().strip().splitlines()
    assert log == ["fieldnode: %s is %d bytes, larger than the 2 MB flash: pass a bigger --flash-size or a "
                   "smaller image" % (image, (2 << 20) + 1)]
