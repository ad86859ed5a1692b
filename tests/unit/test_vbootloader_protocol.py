"""The ROM-loader emulator at the protocol level: a raw SLIP client against VirtualBootloader in-process.

(tests/hil/test_vbootloader.py drives it with stock esptool; these pin the details esptool's happy path
does not show: error codes, status lengths, state changes.)
"""
import hashlib
import socket
import struct

import pytest

from fieldnode.bench import vbootloader as vb
from fieldnode.bench.vbootloader import SlipLink, SpiFlash, VirtualBootloader, checksum

ROM_OK = b"\x00\x00\x00\x00"
STUB_OK = b"\x00\x00"


class Client:
    def __init__(self, url, timeout=5.0):
        host, port = url[len("socket://"):].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.link = SlipLink(self.sock)

    def send(self, op, data=b"", chk=0):
        self.link.send(struct.pack("<BBHI", 0, op, len(data), chk) + data)

    def reply(self, op):
        while True:
            frame = self.link.recv()
            assert frame is not None, "no reply to %#x" % op
            if frame[:2] == bytes([1, op]):
                value = struct.unpack_from("<I", frame, 4)[0]
                return value, frame[8:]

    def command(self, op, data=b"", chk=0):
        self.send(op, data, chk)
        return self.reply(op)

    def block(self, op, payload, seq=0, chk=None):
        data = struct.pack("<IIII", len(payload), seq, 0, 0) + payload
        return self.command(op, data, checksum(payload) if chk is None else chk)

    def run_stub(self):
        code = b"\x01\x02\x03\x04\x05\x06\x07\x08"
        assert self.command(vb.MEM_BEGIN, struct.pack("<IIII", 8, 1, 8, 0x40080000))[1] == ROM_OK
        assert self.block(vb.MEM_DATA, code)[1] == ROM_OK
        assert self.command(vb.MEM_END, struct.pack("<II", 0, 0x40080004))[1] == ROM_OK
        assert self.link.recv() == b"OHAI"

    def close(self):
        self.sock.close()


@pytest.fixture
def chip(tmp_path):
    """chip(name) -> (VirtualBootloader serving in a thread, connected Client); all stopped at teardown."""
    servers, clients = [], []

    def start(name="esp32", **kw):
        server = VirtualBootloader(name, tmp_path / ("%s.bin" % name), mac=bytes.fromhex("240ac4010203"), **kw)
        servers.append(server.start())
        client = Client(server.url)
        clients.append(client)
        return server, client

    yield start
    for c in clients:
        c.close()
    for s in servers:
        s.stop()


def test_sync_is_answered_eight_times_with_the_rom_value(chip):
    _, c = chip()
    c.send(vb.SYNC, vb.SYNC_PAYLOAD)
    replies = [c.reply(vb.SYNC) for _ in range(8)]
    assert replies == [(vb.ROM_SYNC_VALUE, ROM_OK)] * 8


def test_rom_errors_carry_four_status_bytes(chip):
    _, c = chip("esp32")
    assert c.command(vb.SPI_ATTACH, bytes(8))[1] == ROM_OK
    assert c.command(vb.FLASH_BEGIN, struct.pack("<IIII", 0x400, 1, 0x400, 0x1000))[1] == ROM_OK
    assert c.block(vb.FLASH_DATA, b"\x00" * 0x400, chk=0x12)[1] == b"\x01\x07\x00\x00"    # invalid CRC
    assert c.block(vb.FLASH_DATA, b"\x00" * 0x400, seq=5)[1] == b"\x01\x05\x00\x00"       # wrong sequence
    assert c.command(vb.ERASE_FLASH)[1] == b"\x01\x05\x00\x00"        # a stub command: unknown to the ROM


def test_esp32_rom_takes_four_flash_begin_words_the_s3_rom_five(chip):
    _, c = chip("esp32")
    c.command(vb.SPI_ATTACH, bytes(8))
    assert c.command(vb.FLASH_BEGIN, struct.pack("<IIIII", 0x400, 1, 0x400, 0x1000, 0))[1][:2] == b"\x01\x05"
    _, s3 = chip("esp32s3")
    s3.command(vb.SPI_ATTACH, bytes(8))
    assert s3.command(vb.FLASH_BEGIN, struct.pack("<IIIII", 0x400, 1, 0x400, 0x1000, 0))[1] == ROM_OK


def test_rom_flash_commands_need_spi_attach(chip):
    _, c = chip("esp32c3")
    assert c.command(vb.FLASH_BEGIN, struct.pack("<IIIII", 0x400, 1, 0x400, 0, 0))[1] == b"\x01\x06\x00\x00"


def test_security_info(chip):
    _, esp32 = chip("esp32")
    assert esp32.command(vb.GET_SECURITY_INFO)[1] == b"\x01\x05\x00\x00"   # not in the ESP32 ROM
    _, c3 = chip("esp32c3")
    _, body = c3.command(vb.GET_SECURITY_INFO)
    assert len(body) == 20 + 4 and body[20:] == ROM_OK
    flags, crypt_cnt, chip_id = struct.unpack_from("<IB", body)[0], body[4], struct.unpack_from("<I", body, 12)[0]
    assert (flags, crypt_cnt, chip_id) == (0, 0, 5)


def test_the_stub_answers_with_its_own_status_and_codes(chip):
    _, c = chip("esp32s3")
    c.run_stub()
    c.send(vb.SYNC, vb.SYNC_PAYLOAD)
    assert c.reply(vb.SYNC) == (0, STUB_OK)                   # the stub syncs with value 0
    for _ in range(7):
        c.reply(vb.SYNC)
    assert c.command(vb.FLASH_DEFL_BEGIN, struct.pack("<IIIII", 100, 1, 0x4000, 0, 0))[1] == STUB_OK
    assert c.block(vb.FLASH_DEFL_DATA, b"junk", chk=0)[1] == b"\x01\xc1"   # bad checksum
    assert c.block(vb.FLASH_DEFL_DATA, b"junk")[1] == b"\x01\xc7"          # not deflate data
    assert c.command(0x7F)[1] == b"\x01\xff"                                # not implemented


def test_stub_md5_is_raw_and_rom_md5_is_hex(chip, tmp_path):
    server, c = chip("esp32")
    server.flash.program(0x2000, b"fieldnode")
    c.command(vb.SPI_ATTACH, bytes(8))
    expected = hashlib.md5(b"fieldnode" + b"\xff" * 7).digest()
    assert c.command(vb.SPI_FLASH_MD5, struct.pack("<IIII", 0x2000, 16, 0, 0))[1] == expected.hex().encode() + ROM_OK
    c.run_stub()
    assert c.command(vb.SPI_FLASH_MD5, struct.pack("<IIII", 0x2000, 16, 0, 0))[1] == expected + STUB_OK


def test_reboot_from_the_stub_returns_to_the_rom_loader(chip):
    _, c = chip("esp32c3")
    c.run_stub()
    assert c.command(vb.FLASH_BEGIN, struct.pack("<IIIII", 0, 0, 0x4000, 0, 0))[1] == STUB_OK
    assert c.command(vb.FLASH_END, struct.pack("<I", 0))[1] == STUB_OK     # 0 = reboot
    c.send(vb.SYNC, vb.SYNC_PAYLOAD)
    assert c.reply(vb.SYNC) == (vb.ROM_SYNC_VALUE, ROM_OK)


def test_running_user_code_leaves_the_loader(chip):
    _, c = chip("esp32")
    c.command(vb.FLASH_BEGIN, struct.pack("<IIII", 0, 0, 0x400, 0))
    assert c.command(vb.FLASH_END, struct.pack("<I", 1))[1] == ROM_OK      # 1 = run user code
    c.sock.settimeout(0.3)
    c.send(vb.SYNC, vb.SYNC_PAYLOAD)
    assert c.link.recv() is None                                          # nobody answers any more


def test_efuse_mac_and_spi_flash_id_through_registers(chip):
    server, c = chip("esp32")
    mac = server.chip.mac
    w1 = c.command(vb.READ_REG, struct.pack("<I", 0x3FF5A004))[0]
    w2 = c.command(vb.READ_REG, struct.pack("<I", 0x3FF5A008))[0]
    assert struct.pack(">II", w2, w1)[2:] == mac
    assert (w2 >> 16) & 0xFF == vb.crc8_maxim(mac)
    # RDID as esptool sends it: USR = command + MISO, 24 MISO bits, command 0x9f, then SPI_CMD.USR
    base = 0x3FF42000
    for addr, value in ((base + 0x2C, 23), (base + 0x1C, (1 << 31) | (1 << 28)),
                        (base + 0x24, (7 << 28) | 0x9F), (base + 0x80, 0), (base, 1 << 18)):
        c.command(vb.WRITE_REG, struct.pack("<IIII", addr, value, 0xFFFFFFFF, 0))
    assert c.command(vb.READ_REG, struct.pack("<I", base))[0] & (1 << 18) == 0   # done
    assert c.command(vb.READ_REG, struct.pack("<I", base + 0x80))[0] == 0x1640EF


def test_a_second_client_is_turned_away(chip):
    server, first = chip("esp32")
    second = Client(server.url)
    try:
        assert second.link.recv() is None                  # closed at once: the port is taken
    finally:
        second.close()
    first.send(vb.SYNC, vb.SYNC_PAYLOAD)
    assert first.reply(vb.SYNC)[0] == vb.ROM_SYNC_VALUE


def test_spi_flash_file_semantics(tmp_path):
    path = tmp_path / "flash.bin"
    flash = SpiFlash(path, 1 << 20)
    try:
        assert flash.read(0x100, 4) == b"\xff" * 4                  # empty file = erased flash
        flash.program(0x2000, b"\x0f\xf0")
        assert path.read_bytes() == b"\xff" * 0x2000 + b"\x0f\xf0"  # gap filled with erased bytes
        flash.program(0x2000, b"\xf3\x3f")                          # NOR: bits only go to 0
        assert flash.read(0x2000, 2) == b"\x03\x30"
        flash.erase(0x1000, 0x2000)                                  # reaches the end: truncated
        assert path.read_bytes() == b"\xff" * 0x1000
        with pytest.raises(vb._Fail):
            flash.read((1 << 20) - 1, 2)                             # past the chip
    finally:
        flash.close()


def test_parse_mac():
    assert vb.parse_mac("24:0A:c4-01:02:03") == bytes.fromhex("240ac4010203")
    for bad in ("24:0a:c4:01:02", "zz:0a:c4:01:02:03", "25:0a:c4:01:02:03"):
        with pytest.raises(ValueError):
            vb.parse_mac(bad)


@pytest.mark.parametrize("option, value, message", [
    ("--mac", "zz:00:00:00:00:00", "fieldnode: --mac: 'zz:00:00:00:00:00' is not a MAC address"),
    ("--listen", "localhost", "fieldnode: --listen: expected HOST:PORT"),
])
def test_cli_bad_usage_changes_nothing(tmp_path, capsys, option, value, message):
    from fieldnode.cli import main

    image = tmp_path / "flash.bin"
    assert main(["vbootloader", "--chip", "esp32", "--flash-image", str(image), option, value]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message) and err.count("\n") == 1
    assert not image.exists()
