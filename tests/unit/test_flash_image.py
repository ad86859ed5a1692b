"""ESP image checks in fieldnode.flash, and the bench's image builder checked against esptool's own reader."""
import hashlib

import pytest
from esptool.bin_image import LoadFirmwareImage

from fieldnode.bench.esp_image import CHIP_IDS, build_image
from fieldnode.flash import FlashError, inspect_image, read_image

CHIPS = ("esp32", "esp32s3", "esp32c3", "esp32c6")


@pytest.mark.parametrize("chip", CHIPS)
def test_built_images_are_valid_for_esptool(chip, tmp_path):
    data = build_image(chip, 64 * 1024, seed=7)
    path = tmp_path / "fw.bin"
    path.write_bytes(data)
    image = LoadFirmwareImage(chip, str(path))
    assert image.chip_id == CHIP_IDS[chip]
    assert image.checksum == image.calculate_checksum()
    assert image.stored_digest == image.calc_digest
    assert len(data) == 64 * 1024


@pytest.mark.parametrize("chip", CHIPS)
def test_inspect_image_names_the_chip(chip):
    data = build_image(chip, 8192)
    info = inspect_image(data)
    assert (info.chip, info.size, info.segments, info.digest) == (chip, 8192, 2, True)
    assert info.sha256 == hashlib.sha256(data).hexdigest()


def test_inspect_image_without_digest():
    assert inspect_image(build_image("esp32", 8192, hash_appended=False)).digest is False


@pytest.mark.parametrize("mutate, problem", [
    (lambda d: d[:10], "only 10 bytes"),
    (lambda d: b"\xea" + d[1:], "first byte 0xea"),
    (lambda d: d[:1] + b"\x00" + d[2:], "0 segments"),
    (lambda d: d[:1] + b"\x11" + d[2:], "17 segments"),
    (lambda d: d[:23] + b"\x02" + d[24:], "hash-appended flag 2"),
    (lambda d: d[:12] + b"\x34\x12" + d[14:], "chip id 4660"),
    (lambda d: d[:500] + bytes([d[500] ^ 0xFF]) + d[501:], "checksum"),
])
def test_inspect_image_refuses(mutate, problem):
    with pytest.raises(FlashError) as info:
        inspect_image(mutate(build_image("esp32", 8192, hash_appended=False)), "fw.bin")
    message = str(info.value)
    assert message.startswith("fw.bin is not a valid ESP firmware image (") and problem in message
    assert "\n" not in message


def test_read_image_errors(tmp_path):
    with pytest.raises(FlashError, match=r"firmware .*nope\.bin not found: check the path"):
        read_image(tmp_path / "nope.bin")
    with pytest.raises(FlashError, match="is a directory"):
        read_image(tmp_path)


def test_inspect_image_refuses_a_bare_application_image():
    with pytest.raises(FlashError) as info:
        inspect_image(build_image("esp32", 8192, app=True), "micropython.bin")
    assert str(info.value).startswith("micropython.bin is a bare application image (it belongs at 0x10000)")
