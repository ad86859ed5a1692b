"""Small, valid ESP32-family firmware images for the bench and tests (never meant to run on a chip).

The layout is the ESP-IDF application image format the ROM boots (and esptool reads):

    header      magic 0xE9, segment count, SPI mode, SPI size/frequency, entry point   (8 bytes)
    extended    WP pin 0xEE, drive strengths, chip id u16, min revision, min/max full
                revision u16, 4 reserved, hash appended                                (16 bytes)
    segments    load address u32, length u32, data                                     (each)
    checksum    0xEF xor every segment byte, in the last byte of a 16-byte line
    digest      SHA-256 of everything before it, when "hash appended" is 1              (32 bytes)

A MicroPython .bin for the ESP32 is written at 0x1000 and starts with the second-stage bootloader (an
image like this one), followed by the partition table and the application; `tail` bytes stand in for
those. For the S3/C3/C6 the .bin goes to 0x0 and also starts with the bootloader.
"""
import hashlib
import random
import struct

MAGIC = 0xE9
CHECKSUM_SEED = 0xEF
# esptool chip name -> chip id in the extended header (as in esptool's targets: IMAGE_CHIP_ID)
CHIP_IDS = {"esp32": 0, "esp32s2": 2, "esp32c3": 5, "esp32s3": 9, "esp32c2": 12, "esp32c6": 13,
            "esp32h2": 16, "esp32p4": 18}
# where a bootloader's data and code segments load (DRAM, IRAM), per chip
_LOAD = {"esp32": (0x3FFF0000, 0x40078000), "esp32s3": (0x3FCE3700, 0x403C9700),
         "esp32c3": (0x3FCD5820, 0x403CE000), "esp32c6": (0x4086C410, 0x40875730),
         "esp32s2": (0x3FFE6100, 0x4004C000), "esp32c2": (0x3FCD5820, 0x403AE000),
         "esp32h2": (0x4083EFD0, 0x4083E000), "esp32p4": (0x4FF2CBC0, 0x4FF29ED0)}


APP_DESC_MAGIC = 0xABCD5432     # esp_app_desc_t.magic_word, at the start of an application's first segment


def build_image(chip, size=256 * 1024, seed=1, hash_appended=True, flash_size_code=0x2, chip_id=None,
                app=False):
    """`size` bytes: a bootloader-style image for `chip` (two segments) followed by filler standing in for
    the rest of a MicroPython .bin. `chip_id` overrides the header's chip id (for wrong-chip tests);
    `app=True` makes it look like a bare application image instead (esp_app_desc_t first)."""
    rng = random.Random(seed)
    dram, iram = _LOAD[chip]
    first = rng.randbytes(1024)
    if app:
        first = struct.pack("<I", APP_DESC_MAGIC) + first[4:]
    segments = [(dram, first), (iram, rng.randbytes(3072))]
    header = struct.pack("<BBBBI", MAGIC, len(segments), 0x02, flash_size_code << 4, iram + 4)
    extended = struct.pack("<BBBBHBHH4BB", 0xEE, 0, 0, 0, CHIP_IDS[chip] if chip_id is None else chip_id,
                           0, 0, 0xFFFF, 0, 0, 0, 0, 1 if hash_appended else 0)
    body = bytearray(header + extended)
    check = CHECKSUM_SEED
    for addr, data in segments:
        body += struct.pack("<II", addr, len(data)) + data
        for b in data:
            check ^= b
    body += b"\x00" * (15 - len(body) % 16)
    body.append(check)
    if hash_appended:
        body += hashlib.sha256(body).digest()
    if size < len(body):
        raise ValueError("an image needs at least %d bytes" % len(body))
    # filler: half random (incompressible), half a repeating pattern, like code + padding in a real .bin
    rest = size - len(body)
    body += rng.randbytes(rest // 2) + bytes(range(256)) * ((rest - rest // 2) // 256 + 1)
    return bytes(body[:size])
