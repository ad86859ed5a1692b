"""An emulated ESP32-family serial bootloader on a TCP port, backed by a flash image file.

Stock esptool talks to it as to a board held in download mode behind a serial-over-TCP bridge
(``esptool --port socket://127.0.0.1:PORT ...``; pyserial's ``serial_for_url`` opens it and esptool skips
the DTR/RTS reset, which a TCP socket cannot carry). Only the silicon is emulated, at the protocol level:

    with VirtualBootloader("esp32", "flash.bin") as vb:      # or: fieldnode vbootloader --chip esp32 ...
        subprocess.run(["esptool", "--port", vb.url, "flash-id"])

**The image file is the flash.** Byte *i* of the file is flash address *i*; the emulated chip reports a
realistic flash size (the board's, e.g. 4 MB, or ``flash_size=``) and everything past the end of the file
reads as erased (0xFF). A write past the end extends the file (gaps filled with 0xFF), an erase that reaches
the end truncates it, and ``erase-flash`` leaves it empty. So a 256 KiB test image stays a 256 KiB file while
esptool sees a 4 MB chip. Writes go straight to the file, so it is current whenever esptool is done.

**Each TCP connection is a power-on in download mode** (BOOT held, EN tapped): the ROM loader answers,
RAM and registers start fresh, the stub is gone; the flash persists. One connection at a time, as with a
serial port: a second client is disconnected at once.

What is emulated
    ROM loader: SLIP framing; SYNC (eight replies, like the ROM); READ_REG / WRITE_REG over a register
    file that holds the chip-detect magic word, the eFuse words esptool reads (MAC, package, revision,
    security bits, all zero = no secure boot or flash encryption), the UART clock divider (crystal
    estimate), the strapping register and the SPI flash controller (user commands: RDID 0x9F, SFDP 0x5A,
    RDSR/WRSR 0x05/0x35/0x15/0x01/0x31/0x11, WREN/WRDI/WEVSR, READ 0x03, reset/power-down are accepted);
    GET_SECURITY_INFO (chip id for ESP32-S3/C3/C6; unsupported on ESP32, as on the real ROM, so esptool
    falls back to the magic word); MEM_BEGIN/DATA/END; FLASH_BEGIN/DATA/END and FLASH_DEFL_BEGIN/DATA/END
    (erase on begin, NOR programming = AND with the erased contents); SPI_ATTACH (required before flash
    commands, as on the ROM); SPI_SET_PARAMS; CHANGE_BAUDRATE; SPI_FLASH_MD5 (32 hex digits);
    READ_FLASH_SLOW (64-byte blocks). Data checksums (0xEF xor), block lengths and sequence numbers are
    checked and answered with the ROM's error codes (4 status bytes).
    Stub: MEM_END with an entry point inside the uploaded code "runs the stub": it sends OHAI and from then
    on answers as esptool's flasher stub (2 status bytes, stub error codes 0xC0-0xC9/0xFF, raw 16-byte
    MD5, deflate streaming, READ_FLASH with its flow-controlled packets, acks and final MD5, ERASE_FLASH,
    ERASE_REGION, RUN_USER_CODE). FLASH_END/FLASH_DEFL_END with "reboot" return to the ROM loader;
    "run user code" (ROM) and RUN_USER_CODE leave the loader: the chip stops answering until the client
    reconnects.
What is not
    The uploaded code is never executed (any code whose entry point lies in what was uploaded is taken to
    be the flasher stub); flash encryption, secure boot and Secure Download Mode (every security eFuse reads
    0; encrypted writes are refused); USB-OTG / USB-Serial-JTAG; SDC and NAND commands; baud rates (a TCP
    socket has none; CHANGE_BAUDRATE is acknowledged); DTR/RTS resets (use a new connection); the boot log
    a real chip prints on reset; SPI flash timing, write protection and octal flash.
"""
from __future__ import annotations

import hashlib
import logging
import os
import select
import socket
import struct
import sys
import threading
import zlib
from pathlib import Path

from .. import boards
from ..errors import FieldnodeError

log = logging.getLogger(__name__)

SECTOR = 0x1000
FLASH_SIZES = {"1MB": 1 << 20, "2MB": 2 << 20, "4MB": 4 << 20, "8MB": 8 << 20, "16MB": 16 << 20}

# Commands (request byte 1)
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
SYNC, WRITE_REG, READ_REG = 0x08, 0x09, 0x0A
SPI_SET_PARAMS, SPI_ATTACH, READ_FLASH_SLOW, CHANGE_BAUDRATE = 0x0B, 0x0D, 0x0E, 0x0F
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END = 0x10, 0x11, 0x12
SPI_FLASH_MD5, GET_SECURITY_INFO = 0x13, 0x14
ERASE_FLASH, ERASE_REGION, READ_FLASH, RUN_USER_CODE = 0xD0, 0xD1, 0xD2, 0xD3
_NAMES = {v: k for k, v in dict(
    FLASH_BEGIN=FLASH_BEGIN, FLASH_DATA=FLASH_DATA, FLASH_END=FLASH_END, MEM_BEGIN=MEM_BEGIN, MEM_END=MEM_END,
    MEM_DATA=MEM_DATA, SYNC=SYNC, WRITE_REG=WRITE_REG, READ_REG=READ_REG, SPI_SET_PARAMS=SPI_SET_PARAMS,
    SPI_ATTACH=SPI_ATTACH, READ_FLASH_SLOW=READ_FLASH_SLOW, CHANGE_BAUDRATE=CHANGE_BAUDRATE,
    FLASH_DEFL_BEGIN=FLASH_DEFL_BEGIN, FLASH_DEFL_DATA=FLASH_DEFL_DATA, FLASH_DEFL_END=FLASH_DEFL_END,
    SPI_FLASH_MD5=SPI_FLASH_MD5, GET_SECURITY_INFO=GET_SECURITY_INFO, ERASE_FLASH=ERASE_FLASH,
    ERASE_REGION=ERASE_REGION, READ_FLASH=READ_FLASH, RUN_USER_CODE=RUN_USER_CODE).items()}
_STUB_ONLY = {ERASE_FLASH, ERASE_REGION, READ_FLASH, RUN_USER_CODE}
SYNC_PAYLOAD = b"\x07\x07\x12\x20" + b"\x55" * 32
CHECKSUM_SEED = 0xEF
ROM_SYNC_VALUE = 0x20120707  # the ROM answers SYNC with a non-zero value; the stub with 0

# Failures as (ROM error code, stub error code); a reply carries one of them after status 1.
BAD_MESSAGE = (0x05, 0xC0)      # ROM "received message is invalid" / stub "bad data length"
BAD_CHECKSUM = (0x07, 0xC1)
BAD_BLOCKSIZE = (0x05, 0xC2)
INVALID = (0x05, 0xC3)          # unknown command, bad sequence, not supported by the emulation
SPI_FAILED = (0x06, 0xC4)       # out of flash, flash not attached
NOT_IN_FLASH_MODE = (0x05, 0xC6)
INFLATE_ERROR = (0x0B, 0xC7)
NOT_ENOUGH_DATA = (0x05, 0xC8)
TOO_MUCH_DATA = (0x05, 0xC9)
NOT_IMPLEMENTED = (0x05, 0xFF)


class VBootloaderError(FieldnodeError):
    pass


class _Fail(Exception):
    def __init__(self, codes, why):
        super().__init__(why)
        self.codes = codes


# ---------------------------------------------------------------------------------------------------------
# Chips: the differences are data. Register addresses are the ones the silicon has (and esptool's targets
# read); eFuse words are laid out as the eFuse controller presents them.
# ---------------------------------------------------------------------------------------------------------

class ChipModel:
    NAME = ""                    # esptool chip name
    IMAGE_CHIP_ID = 0            # chip id in image headers and GET_SECURITY_INFO
    MAGIC = 0                    # the ROM word at 0x40001000 (esptool's detection for ESP32)
    SECURITY_INFO = True         # does the ROM implement GET_SECURITY_INFO?
    ROM_FLASH_BEGIN_WORDS = 5    # ESP32's ROM takes 4 words (no "encrypted" flag)
    OUI = b"\x24\x0a\xc4"        # an Espressif MAC prefix, for default MACs
    FLASH_JEDEC = (0xEF, 0x40)   # manufacturer, memory type of the flash chip (capacity from the size)
    SPI_BASE = 0x60002000        # SPI flash controller (SPI1 / SPI_MEM)
    SPI_USR, SPI_USR1, SPI_USR2, SPI_MOSI_DLEN, SPI_MISO_DLEN, SPI_W0 = 0x18, 0x1C, 0x20, 0x24, 0x28, 0x58
    SPI_ADDR_MSB = False         # ESP32 shifts the address into the top bits of SPI_ADDR
    UART_CLKDIV_REG = 0x60000014
    APB_MHZ = 40                 # UART clock in download mode: the crystal
    GPIO_STRAP_REG = None
    STRAP = 0                    # strapping pins as latched at reset (download mode)
    CHIP_DETECT_MAGIC_REG = 0x40001000

    def __init__(self, mac):
        self.mac = bytes(mac)

    @classmethod
    def flash_size(cls):
        """The board's flash size for this chip, from boards/ (the first board with this chip)."""
        for name in boards.names():
            data = boards.load(name)
            if data["chip"] == cls.NAME:
                return data["flash_size"]
        return "4MB"

    @classmethod
    def micropython_offset(cls):
        return boards.CHIPS[cls.NAME][0]

    def registers(self):
        """{address: value} of the read-only silicon esptool looks at."""
        regs = {self.CHIP_DETECT_MAGIC_REG: self.MAGIC}
        if self.GPIO_STRAP_REG is not None:
            regs[self.GPIO_STRAP_REG] = self.STRAP
        return regs


class ESP32(ChipModel):
    NAME = "esp32"
    IMAGE_CHIP_ID = 0
    MAGIC = 0x00F01D83
    SECURITY_INFO = False
    ROM_FLASH_BEGIN_WORDS = 4
    OUI = b"\x24\x0a\xc4"
    SPI_BASE = 0x3FF42000
    SPI_USR, SPI_USR1, SPI_USR2, SPI_MOSI_DLEN, SPI_MISO_DLEN, SPI_W0 = 0x1C, 0x20, 0x24, 0x28, 0x2C, 0x80
    SPI_ADDR_MSB = True
    UART_CLKDIV_REG = 0x3FF40014
    GPIO_STRAP_REG, STRAP = 0x3FF44038, 0x03       # boot:0x3 DOWNLOAD_BOOT; MTDI low = 3.3 V flash
    EFUSE_BASE = 0x3FF5A000
    APB_CTL_DATE = 0x3FF6607C
    RTCCALICFG1 = 0x3FF5F06C
    CK8M_FREQ = 80          # eFuse word 4 [7:0]; with the RTC calibration below the ROM computes 40 MHz
    RTC_CALI_VALUE = 1280

    def registers(self):
        m = self.mac
        words = [0] * 7
        words[1] = int.from_bytes(m[2:6], "big")
        words[2] = (crc8_maxim(m) << 16) | (m[0] << 8) | m[1]
        words[3] = (1 << 9) | (1 << 15)     # package D0WD (1), revision bit 0
        words[4] = self.CK8M_FREQ
        words[5] = 1 << 20                  # revision bit 1; minor revision 0
        regs = super().registers()
        regs.update({self.EFUSE_BASE + 4 * i: w for i, w in enumerate(words)})
        regs[self.APB_CTL_DATE] = 0x80000000 | 0x16042000   # revision bit 2 (ECO3)
        regs[self.RTCCALICFG1] = self.RTC_CALI_VALUE << 7
        return regs


class _EfuseV2Chip(ChipModel):
    """ESP32-S3/C3/C6: BLOCK0 read registers at EFUSE_BASE+0x30, BLOCK1 (MAC, package, revision,
    embedded flash) at +0x44, BLOCK2 (block version) at +0x5C."""
    EFUSE_BASE = 0
    PKG, MAJOR, MINOR, FLASH_CAP, FLASH_VENDOR, BLK_MAJOR, BLK_MINOR = 0, 0, 0, 0, 0, 1, 2
    MAC_EXT = 0             # upper half of MAC word 1 (0xFFFE on chips with an EUI-64)

    def block1(self):
        w = [0] * 6
        w[3] = (self.PKG << 21) | ((self.MINOR & 7) << 18) | (self.BLK_MINOR << 24) | (self.FLASH_CAP << 27)
        w[4] = self.FLASH_VENDOR
        w[5] = ((self.MINOR >> 3) << 23) | (self.MAJOR << 24)
        return w

    def registers(self):
        m = self.mac
        w = self.block1()
        w[0] = int.from_bytes(m[2:6], "big")
        w[1] = (self.MAC_EXT << 16) | (m[0] << 8) | m[1]
        regs = super().registers()
        regs.update({self.EFUSE_BASE + 0x44 + 4 * i: v for i, v in enumerate(w)})
        regs[self.EFUSE_BASE + 0x5C + 4 * 4] = self.BLK_MAJOR
        return regs


class ESP32S3(_EfuseV2Chip):
    NAME = "esp32s3"
    IMAGE_CHIP_ID = 9
    MAGIC = 0x00000009
    OUI = b"\x7c\xdf\xa1"
    GPIO_STRAP_REG, STRAP = 0x60004038, 0x00       # boot:0x0 DOWNLOAD(USB/UART0)
    EFUSE_BASE = 0x60007000
    MINOR = 2


class ESP32C3(_EfuseV2Chip):
    NAME = "esp32c3"
    IMAGE_CHIP_ID = 5
    MAGIC = 0x1B31506F
    OUI = b"\x58\xcf\x79"
    FLASH_JEDEC = (0xC8, 0x40)                      # GigaDevice, in package (eFuse: 4 MB embedded, GD)
    EFUSE_BASE = 0x60008800
    MINOR, FLASH_CAP, FLASH_VENDOR = 4, 1, 2


class ESP32C6(_EfuseV2Chip):
    NAME = "esp32c6"
    IMAGE_CHIP_ID = 13
    MAGIC = 0x2CE0806F
    OUI = b"\x40\x4c\xca"
    SPI_BASE = 0x60003000
    EFUSE_BASE = 0x600B0800
    MINOR = 1
    MAC_EXT = 0xFFFE

    def block1(self):
        w = [0] * 6
        w[3] = (self.PKG << 24) | (self.MINOR << 18) | (self.MAJOR << 22)
        w[4] = self.FLASH_CAP
        return w


CHIPS = {cls.NAME: cls for cls in (ESP32, ESP32S3, ESP32C3, ESP32C6)}


def crc8_maxim(data):
    """CRC-8/MAXIM (poly 0x31 reflected, init 0): the CRC the ESP32 keeps next to its factory MAC."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


def parse_mac(text):
    """'24:0a:c4:12:34:56' (':' or '-' or none) -> 6 bytes of a unicast MAC; ValueError otherwise."""
    digits = text.replace(":", "").replace("-", "").strip()
    try:
        mac = bytes.fromhex(digits)
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise ValueError("%r is not a MAC address (six hex bytes, e.g. 24:0a:c4:12:34:56)" % text)
    if mac[0] & 1:
        raise ValueError("%s is a multicast address; a chip's MAC is unicast (first byte even)" % text)
    return mac


def default_mac(chip, image_path):
    """A stable MAC per image file: the chip family's Espressif prefix + 3 bytes of the path's hash."""
    tail = hashlib.sha256(str(Path(image_path).resolve()).encode()).digest()[:3]
    return CHIPS[chip].OUI + tail


def format_mac(mac):
    return ":".join("%02x" % b for b in mac)


# ---------------------------------------------------------------------------------------------------------
# The SPI NOR flash chip, backed by the image file
# ---------------------------------------------------------------------------------------------------------

class SpiFlash:
    """SPI NOR flash whose contents live in `path` (see the module docstring for the file semantics)."""

    def __init__(self, path, size, jedec=(0xEF, 0x40)):
        self.path = Path(path)
        self.size = size
        self.jedec_id = bytes([jedec[0], jedec[1], size.bit_length() - 1])
        self._lock = threading.RLock()
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise VBootloaderError("%s: cannot open the flash image (%s): pass a writable file"
                                   % (path, exc.strerror)) from None
        length = os.fstat(self._fd).st_size
        if length > size:
            os.close(self._fd)
            raise VBootloaderError("%s is %d bytes, larger than the %d MB flash: pass a bigger --flash-size "
                                   "or a smaller image" % (path, length, size >> 20))
        self.status = [0x00, 0x02, 0x60]   # SR1 (WIP, WEL...), SR2 (QE set), SR3 (drive strength)
        self._volatile_sr = False
        self.sfdp = self._sfdp_table()

    def close(self):
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _length(self):
        return os.fstat(self._fd).st_size

    def check(self, addr, n):
        if addr < 0 or n < 0 or addr + n > self.size:
            raise _Fail(SPI_FAILED, "%#x+%#x is outside the %d MB flash" % (addr, n, self.size >> 20))

    def read(self, addr, n):
        with self._lock:
            self.check(addr, n)
            data = os.pread(self._fd, n, addr)
            return data + b"\xff" * (n - len(data))

    def program(self, addr, data):
        """NOR programming: bits only go 1 -> 0 (the new byte is old AND data)."""
        if not data:
            return
        with self._lock:
            self.check(addr, len(data))
            old = self.read(addr, len(data))
            n = len(data)
            new = (int.from_bytes(old, "big") & int.from_bytes(data, "big")).to_bytes(n, "big")
            if new == old:
                return
            length = self._length()
            if addr > length:
                os.pwrite(self._fd, b"\xff" * (addr - length), length)
            os.pwrite(self._fd, new, addr)

    def erase(self, addr, n):
        with self._lock:
            self.check(addr, n)
            length = self._length()
            if addr >= length or n == 0:
                return
            if addr + n >= length:
                os.ftruncate(self._fd, addr)
            else:
                os.pwrite(self._fd, b"\xff" * n, addr)

    def erase_all(self):
        with self._lock:
            os.ftruncate(self._fd, 0)

    def md5(self, addr, n):
        h = hashlib.md5()
        for start in range(addr, addr + n, 1 << 20):
            h.update(self.read(start, min(1 << 20, addr + n - start)))
        return h.digest()

    def _sfdp_table(self):
        # JESD216 header: "SFDP", v1.6, one parameter header (JEDEC basic table, 16 dwords at 0x80).
        table = bytearray(b"\xff" * 0x100)
        table[0:8] = b"SFDP\x06\x01\x00\xff"
        table[8:16] = bytes([0x00, 0x06, 0x01, 0x10, 0x80, 0x00, 0x00, 0xFF])
        table[0x80:0x88] = struct.pack("<II", 0xFFF920E5, self.size * 8 - 1)
        return bytes(table)

    def transact(self, cmd, addr, mosi, n):
        """One SPI transaction: command byte, address, MOSI bytes; returns n MISO bytes."""
        sr = self.status
        out = b""
        if cmd == 0x9F:                                  # RDID
            out = self.jedec_id
        elif cmd == 0x5A:                                # read SFDP
            out = self.sfdp[addr:addr + n] if addr < len(self.sfdp) else b""
        elif cmd in (0x05, 0x35, 0x15):                  # RDSR1/2/3
            out = bytes([sr[(0x05, 0x35, 0x15).index(cmd)]]) * n
        elif cmd == 0x03:                                # READ
            out = self.read(addr % self.size, min(n, self.size - addr % self.size))
        elif cmd == 0x06:                                # WREN
            sr[0] |= 0x02
        elif cmd == 0x04:                                # WRDI
            sr[0] &= ~0x02
        elif cmd == 0x50:                                # write enable for volatile status
            self._volatile_sr = True
        elif cmd in (0x01, 0x31, 0x11):                  # WRSR (1 or 2 bytes), WRSR2, WRSR3
            if sr[0] & 0x02 or self._volatile_sr:
                first = (0x01, 0x31, 0x11).index(cmd)
                for i, value in enumerate(mosi[:3 - first]):
                    sr[first + i] = value & (0xFC if first + i == 0 else 0xFF)
            sr[0] &= ~0x02
            self._volatile_sr = False
        # 0x66/0x99 reset, 0xB9/0x79/0xFF/0xAB power-down and release: nothing to model.
        return (out + b"\xff" * n)[:n]


# ---------------------------------------------------------------------------------------------------------
# One connection = one power-on in download mode
# ---------------------------------------------------------------------------------------------------------

def slip_encode(payload):
    return b"\xc0" + payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


class SlipLink:
    """SLIP frames over a socket. Every 0xC0 ends the frame in progress (if any) and starts the next;
    bytes before the first 0xC0 and empty frames are dropped."""

    def __init__(self, sock):
        self.sock = sock
        self._buf = bytearray()
        self._in_frame = False
        self._frames = []

    def recv(self):
        """The next frame's payload, or None when the peer is gone."""
        while not self._frames:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                return None
            if not data:
                return None
            self._feed(data)
        return self._frames.pop(0)

    def _feed(self, data):
        self._buf += data
        while True:
            i = self._buf.find(0xC0)
            if i < 0:
                if not self._in_frame:
                    self._buf.clear()
                return
            if self._in_frame and i:
                raw = bytes(self._buf[:i])
                self._frames.append(raw.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb"))
            del self._buf[:i + 1]
            self._in_frame = True

    def send(self, payload):
        self.sock.sendall(slip_encode(payload))


class Session:
    """The chip from a reset into download mode until the client disconnects."""

    def __init__(self, chip, flash, trace=None):
        self.chip = chip
        self.flash = flash
        self.trace = trace or (lambda msg: None)
        self.silicon = chip.registers()
        self.stub = False
        self.running_app = False
        self._reset()

    def _reset(self):
        self.regs = {}
        self.attached = False
        self.baud = 115200
        self.ram = []              # uploaded segments: [addr, bytearray, declared size]
        self.mem = None            # RAM download in progress: {"addr", "size", "seq"}
        self.write = None          # flash download in progress
        self.stub = False

    # -- wire ------------------------------------------------------------------------------------------

    def serve(self, link):
        """Answer requests until the client disconnects."""
        self.link = link
        try:
            self._serve()
        except OSError as exc:          # the client went away mid-answer
            self.trace("connection lost: %s" % exc)

    def _serve(self):
        link = self.link
        while True:
            packet = link.recv()
            if packet is None:
                return
            if self.running_app:
                continue                      # user code owns the UART now; the loader is gone
            if len(packet) < 8 or packet[0] != 0x00:
                self.trace("ignored a frame that is not a request (%d bytes)" % len(packet))
                continue
            _, op, size, chk = struct.unpack_from("<BBHI", packet)
            data = packet[8:]
            self.trace("<- %s (%#04x) %d bytes" % (_NAMES.get(op, "?"), op, len(data)))
            if size != len(data):
                self._reply(op, codes=BAD_MESSAGE, why="size field %d, %d data bytes" % (size, len(data)))
                continue
            try:
                self._dispatch(op, data, chk)
            except _Fail as fail:
                self._reply(op, codes=fail.codes, why=str(fail))

    def _reply(self, op, value=0, data=b"", codes=None, why=""):
        if codes is None:
            status = b"\x00\x00"
        else:
            status = bytes([1, codes[1] if self.stub else codes[0]])
            self.trace("   failed: %s (error %#04x)" % (why, status[1]))
        if not self.stub:
            status += b"\x00\x00"          # the ROM sends two more (reserved) status bytes
        body = data + status
        self.link.send(struct.pack("<BBHI", 0x01, op, len(body), value) + body)

    def _dispatch(self, op, data, chk):
        if op in _STUB_ONLY and not self.stub:
            raise _Fail(NOT_IMPLEMENTED, "%s is a stub command; the ROM does not know it" % _NAMES[op])
        handler = self._handlers.get(op)
        if handler is None:
            raise _Fail(NOT_IMPLEMENTED, "unknown command %#04x" % op)
        handler(self, op, data, chk)

    @staticmethod
    def _words(data, n, at_least=None):
        if len(data) != 4 * n and not (at_least is not None and len(data) >= 4 * at_least
                                       and len(data) % 4 == 0 and len(data) <= 4 * n):
            raise _Fail(BAD_MESSAGE, "expected %d parameter words, got %d bytes" % (n, len(data)))
        return struct.unpack("<%dI" % (len(data) // 4), data)

    @staticmethod
    def _block(data, chk):
        """The data part of a *_DATA command, its sequence number; checks length and checksum."""
        if len(data) < 16:
            raise _Fail(BAD_MESSAGE, "a data command needs 16 header bytes")
        length, seq = struct.unpack_from("<II", data)
        block = data[16:]
        if length != len(block):
            raise _Fail(BAD_MESSAGE, "block length field %d, %d bytes sent" % (length, len(block)))
        if checksum(block) != chk & 0xFF:
            raise _Fail(BAD_CHECKSUM, "block checksum %#04x, computed %#04x" % (chk & 0xFF, checksum(block)))
        return seq, block

    # -- registers -------------------------------------------------------------------------------------

    def read_reg(self, addr):
        if addr == self.chip.UART_CLKDIV_REG:
            return round(self.chip.APB_MHZ * 1e6 / self.baud) & 0xFFFFF
        if addr in self.silicon:
            return self.silicon[addr]
        return self.regs.get(addr, 0)

    def write_reg(self, addr, value, mask):
        if addr in self.silicon:
            return                          # eFuse read registers and ROM are read-only
        self.regs[addr] = (self.regs.get(addr, 0) & ~mask) | (value & mask)
        if addr == self.chip.SPI_BASE and self.regs[addr] & (1 << 18):   # SPI_CMD_REG, USR bit
            self._spi_user_command()
            self.regs[addr] &= ~(1 << 18)   # the controller clears USR when the transaction is done

    def _spi_user_command(self):
        c, r = self.chip, self.regs
        base = c.SPI_BASE
        usr, usr1, usr2 = r.get(base + c.SPI_USR, 0), r.get(base + c.SPI_USR1, 0), r.get(base + c.SPI_USR2, 0)
        cmd = usr2 & 0xFF if usr & (1 << 31) else None
        addr = 0
        if usr & (1 << 30):
            bits = ((usr1 >> 26) & 0x3F) + 1
            addr = r.get(base + 0x04, 0)
            addr = addr >> (32 - bits) if c.SPI_ADDR_MSB else addr & ((1 << bits) - 1)
        mosi = b""
        if usr & (1 << 27):
            nbytes = (r.get(base + c.SPI_MOSI_DLEN, 0) + 1 + 7) // 8
            words = [r.get(base + c.SPI_W0 + 4 * i, 0) for i in range((nbytes + 3) // 4)]
            mosi = struct.pack("<%dI" % len(words), *words)[:nbytes]
        miso_bits = r.get(base + c.SPI_MISO_DLEN, 0) + 1 if usr & (1 << 28) else 0
        if cmd is None:
            return
        out = self.flash.transact(cmd, addr, mosi, (miso_bits + 7) // 8)
        self.trace("   SPI flash command %#04x addr %#x -> %s" % (cmd, addr, out.hex() or "-"))
        if miso_bits:
            out += b"\x00" * (-len(out) % 4)
            value = int.from_bytes(out, "little") & ((1 << miso_bits) - 1)
            raw = value.to_bytes(len(out), "little")
            for i in range(0, len(raw), 4):
                r[base + c.SPI_W0 + i] = int.from_bytes(raw[i:i + 4], "little")

    # -- commands --------------------------------------------------------------------------------------

    def _sync(self, op, data, chk):
        if data != SYNC_PAYLOAD:
            raise _Fail(BAD_MESSAGE, "not a SYNC pattern")
        for _ in range(8):                  # the loader answers a SYNC eight times
            self._reply(op, value=0 if self.stub else ROM_SYNC_VALUE)

    def _read_reg(self, op, data, chk):
        (addr,) = self._words(data, 1)
        self._reply(op, value=self.read_reg(addr))

    def _write_reg(self, op, data, chk):
        if not data or len(data) % 16:
            raise _Fail(BAD_MESSAGE, "WRITE_REG takes groups of 4 words")
        for addr, value, mask, _delay_us in struct.iter_unpack("<IIII", data):
            self.write_reg(addr, value, mask)
        self._reply(op)

    def _mem_begin(self, op, data, chk):
        size, blocks, blocksize, addr = self._words(data, 4)
        if blocksize == 0 or blocks * blocksize < size:
            raise _Fail(BAD_BLOCKSIZE, "%d blocks of %d bytes cannot hold %d bytes" % (blocks, blocksize, size))
        self.mem = {"addr": addr, "size": size, "seq": 0, "data": bytearray()}
        self.ram.append(self.mem)
        self._reply(op)

    def _mem_data(self, op, data, chk):
        seq, block = self._block(data, chk)
        if self.mem is None:
            raise _Fail(INVALID, "MEM_DATA without MEM_BEGIN")
        if seq != self.mem["seq"]:
            raise _Fail(INVALID, "MEM_DATA sequence %d, expected %d" % (seq, self.mem["seq"]))
        if len(self.mem["data"]) + len(block) > self.mem["size"]:
            raise _Fail(TOO_MUCH_DATA, "more data than MEM_BEGIN announced")
        self.mem["data"] += block
        self.mem["seq"] += 1
        self._reply(op)

    def _mem_end(self, op, data, chk):
        no_run, entry = self._words(data, 2)
        self.mem = None
        self._reply(op)
        if no_run:
            return
        if self.stub:
            self.trace("   the stub jumps to the loaded code at %#x and stops answering" % entry)
            self.running_app = True
        elif any(seg["addr"] <= entry < seg["addr"] + len(seg["data"]) for seg in self.ram):
            self.stub = True
            self.attached = True            # the stub attaches the flash itself
            self.trace("   running the uploaded code at %#x as the flasher stub" % entry)
            self.link.send(b"OHAI")
        else:
            self.trace("   entry %#x is outside the uploaded code: the chip crashes and stays silent" % entry)
            self.running_app = True

    def _flash_begin(self, op, data, chk):
        if self.stub:
            params = self._words(data, 5, at_least=4)
        else:
            params = self._words(data, self.chip.ROM_FLASH_BEGIN_WORDS)
        size, blocks, blocksize, offset = params[:4]
        if len(params) > 4 and params[4]:
            raise _Fail(INVALID, "encrypted writes are not emulated")
        if blocks and blocksize == 0:
            raise _Fail(BAD_BLOCKSIZE, "block size 0")
        if size:
            # ROM: `size` is the erase size; stub: the exact byte count (it erases just in time; erasing
            # up front leaves the same flash contents). Either way whole sectors go to 0xFF.
            if not self.attached:
                raise _Fail(SPI_FAILED, "flash not attached (send SPI_ATTACH first)")
            self.flash.check(offset, size)
            start = offset - offset % SECTOR
            end = min(-(-(offset + size) // SECTOR) * SECTOR, self.flash.size)
            self.flash.erase(start, end - start)
        deflate = op == FLASH_DEFL_BEGIN
        if self.stub or deflate:
            limit = size
        else:
            limit = blocks * blocksize
        self.write = {"offset": offset, "limit": min(limit, self.flash.size - offset) if size else 0,
                      "size": size, "seq": 0, "written": 0, "deflate": deflate,
                      "inflater": zlib.decompressobj() if deflate else None}
        self._reply(op)

    def _flash_data(self, op, data, chk):
        seq, block = self._block(data, chk)
        w = self.write
        if w is None or w["deflate"] != (op == FLASH_DEFL_DATA):
            raise _Fail(NOT_IN_FLASH_MODE, "%s without its BEGIN" % _NAMES[op])
        if seq != w["seq"]:
            raise _Fail(INVALID, "block sequence %d, expected %d" % (seq, w["seq"]))
        if w["deflate"]:
            try:
                out = w["inflater"].decompress(block)
            except zlib.error as exc:
                raise _Fail(INFLATE_ERROR, "inflate: %s" % exc) from None
        else:
            out = block
        room = max(w["limit"] - w["written"], 0)
        if len(out) > room:
            # only the 0xFF padding of an uncompressed last block may run past what BEGIN announced
            if w["deflate"] or out[room:].strip(b"\xff"):
                raise _Fail(TOO_MUCH_DATA, "data past the %d bytes announced" % w["limit"])
            out = out[:room]
        self.flash.program(w["offset"] + w["written"], out)
        w["written"] += len(out)
        w["seq"] += 1
        self._reply(op)

    def _flash_end(self, op, data, chk):
        (run_user_code,) = self._words(data, 1)
        w, self.write = self.write, None
        if (self.stub and w is not None and w["deflate"] == (op == FLASH_DEFL_END)
                and w["written"] < w["size"]):
            raise _Fail(NOT_ENOUGH_DATA, "%d of %d bytes written" % (w["written"], w["size"]))
        self._reply(op)
        if not run_user_code:
            self.trace("   reboot: back to the ROM loader (the strapping pins still select download mode)")
            self._reset()
        elif not self.stub:
            self.trace("   the ROM runs the user code: the loader stops answering")
            self.running_app = True

    def _spi_attach(self, op, data, chk):
        self._words(data, 1 if self.stub else 2)
        self.attached = True
        self._reply(op)

    def _spi_set_params(self, op, data, chk):
        _fl_id, total, _block, sector, _page, _mask = self._words(data, 6)
        if sector != SECTOR or total == 0:
            raise _Fail(BAD_MESSAGE, "flash parameters %d/%d are not a NOR flash" % (total, sector))
        self._reply(op)

    def _change_baud(self, op, data, chk):
        new, _old = self._words(data, 2)
        self._reply(op)
        self.baud = new or self.baud

    def _md5(self, op, data, chk):
        addr, size, _, _ = self._words(data, 4)
        if not self.attached:
            raise _Fail(SPI_FAILED, "flash not attached")
        self.flash.check(addr, size)
        digest = self.flash.md5(addr, size)
        self._reply(op, data=digest if self.stub else digest.hex().encode())

    def _read_flash_slow(self, op, data, chk):
        if self.stub:
            raise _Fail(NOT_IMPLEMENTED, "the stub reads with READ_FLASH")
        addr, size = self._words(data, 2)
        if size > 64:
            raise _Fail((0x0A, 0xC0), "READ_FLASH_SLOW reads at most 64 bytes")
        if not self.attached:
            raise _Fail(SPI_FAILED, "flash not attached")
        block = self.flash.read(addr, size)
        self._reply(op, data=block + b"\x00" * (64 - size))

    def _security_info(self, op, data, chk):
        if not self.chip.SECURITY_INFO:
            raise _Fail(NOT_IMPLEMENTED, "this ROM has no GET_SECURITY_INFO")
        # flags, flash_crypt_cnt, 7 key purposes, chip id, API (ECO) version: no security features on
        self._reply(op, data=struct.pack("<IB7BII", 0, 0, *([0] * 7), self.chip.IMAGE_CHIP_ID, 0))

    def _erase_flash(self, op, data, chk):
        self.flash.erase_all()
        self._reply(op)

    def _erase_region(self, op, data, chk):
        addr, size = self._words(data, 2)
        if addr % SECTOR or size % SECTOR:
            raise _Fail(BAD_MESSAGE, "erase region %#x+%#x is not sector aligned" % (addr, size))
        self.flash.check(addr, size)
        self.flash.erase(addr, size)
        self._reply(op)

    def _read_flash(self, op, data, chk):
        addr, size, packet, in_flight = self._words(data, 4)
        if packet == 0 or in_flight == 0:
            raise _Fail(BAD_BLOCKSIZE, "packet size and window must be positive")
        self.flash.check(addr, size)
        self._reply(op)
        sent = acked = 0
        md5 = hashlib.md5()
        while acked < size:
            if sent < size and (sent - acked) // packet < in_flight:
                chunk = self.flash.read(addr + sent, min(packet, size - sent))
                md5.update(chunk)
                self.link.send(chunk)
                sent += len(chunk)
                continue
            ack = self.link.recv()
            if ack is None:
                return
            if len(ack) != 4 or struct.unpack("<I", ack)[0] > sent:
                self.trace("   READ_FLASH: bad acknowledgement %s; abandoning the read" % ack.hex())
                return
            acked = struct.unpack("<I", ack)[0]
        self.link.send(md5.digest())

    def _run_user_code(self, op, data, chk):
        self.trace("   RUN_USER_CODE: the stub jumps to the application and stops answering")
        self.running_app = True

    _handlers = {
        SYNC: _sync, READ_REG: _read_reg, WRITE_REG: _write_reg,
        MEM_BEGIN: _mem_begin, MEM_DATA: _mem_data, MEM_END: _mem_end,
        FLASH_BEGIN: _flash_begin, FLASH_DATA: _flash_data, FLASH_END: _flash_end,
        FLASH_DEFL_BEGIN: _flash_begin, FLASH_DEFL_DATA: _flash_data, FLASH_DEFL_END: _flash_end,
        SPI_ATTACH: _spi_attach, SPI_SET_PARAMS: _spi_set_params, CHANGE_BAUDRATE: _change_baud,
        SPI_FLASH_MD5: _md5, READ_FLASH_SLOW: _read_flash_slow, GET_SECURITY_INFO: _security_info,
        ERASE_FLASH: _erase_flash, ERASE_REGION: _erase_region, READ_FLASH: _read_flash,
        RUN_USER_CODE: _run_user_code,
    }


def checksum(data, state=CHECKSUM_SEED):
    for b in data:
        state ^= b
    return state


# ---------------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------------

class VirtualBootloader:
    """A chip in download mode on a loopback TCP port. ``start()``/``stop()``, a context manager, or
    ``serve_forever()`` in the calling thread (the CLI)."""

    def __init__(self, chip, flash_image, mac=None, flash_size=None, host="127.0.0.1", port=0, trace=None):
        if chip not in CHIPS:
            raise VBootloaderError("unknown chip %r: emulated chips are %s" % (chip, ", ".join(CHIPS)))
        model = CHIPS[chip]
        size_name = flash_size or model.flash_size()
        if size_name not in FLASH_SIZES:
            raise VBootloaderError("flash size %r: choose one of %s" % (size_name, ", ".join(FLASH_SIZES)))
        self.chip = model(mac if mac is not None else default_mac(chip, flash_image))
        self.flash_size = size_name
        self.flash = SpiFlash(flash_image, FLASH_SIZES[size_name], model.FLASH_JEDEC)
        self._trace = trace
        self._bind = (host, port)
        self._listener = None
        self._wake = None
        self._thread = None
        self._busy = threading.Lock()
        self._conns = set()

    @property
    def mac(self):
        return format_mac(self.chip.mac)

    @property
    def url(self):
        host, port = self._listener.getsockname()[:2]
        return "socket://%s:%d" % (host, port)

    def listen(self):
        if self._listener is None:
            self._listener = socket.create_server(self._bind)
            self._wake = socket.socketpair()
        return self

    def start(self):
        """Serve in a background thread (for in-process use)."""
        self.listen()
        self._thread = threading.Thread(target=self.serve_forever, name="vbootloader", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=5.0):
        if self._listener is None:
            return
        self._wake[1].send(b"x")
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def close(self):
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._listener is not None:
            self._listener.close()
            for s in self._wake:
                s.close()
            self._listener = self._wake = None
        self.flash.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def serve_forever(self):
        self.listen()
        listener, wake = self._listener, self._wake[0]
        while True:
            readable, _, _ = select.select([listener, wake], [], [])
            if wake in readable:
                return
            try:
                conn, peer = listener.accept()
            except OSError:
                continue
            if not self._busy.acquire(blocking=False):
                self._log("%s:%d: refused, another client has the port" % peer[:2])
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn, peer), name="vbootloader-session",
                             daemon=True).start()

    def _serve(self, conn, peer):
        try:
            self._log("%s:%d connected: %s in download mode" % (peer[0], peer[1], self.chip.NAME))
            Session(self.chip, self.flash, self._trace).serve(SlipLink(conn))
        except Exception:
            log.exception("vbootloader session failed")
            raise
        finally:
            self._conns.discard(conn)
            conn.close()
            self._busy.release()
            self._log("%s:%d disconnected" % peer[:2])

    def _log(self, msg):
        if self._trace:
            self._trace(msg)


def stderr_trace(msg):
    print("vbootloader: " + msg, file=sys.stderr, flush=True)


class VBootloaderProcess:
    """`fieldnode vbootloader` as a child process, for tests and bench scripts::

        with VBootloaderProcess("esp32s3", "flash.bin", mac="7c:df:a1:00:00:01", log=tmp / "vb.log") as vb:
            ... vb.url ...

    start() waits (bounded) for the URL line; stop() ends the process by its pid (SIGTERM, then SIGKILL)
    and returns its exit code.
    """

    START_TIMEOUT = 15.0
    STOP_TIMEOUT = 5.0

    def __init__(self, chip, flash_image, mac=None, flash_size=None, log=None, trace=False):
        self.argv = [sys.executable, "-m", "fieldnode.cli", "vbootloader", "--chip", chip,
                     "--flash-image", str(flash_image)]
        if mac:
            self.argv += ["--mac", mac]
        if flash_size:
            self.argv += ["--flash-size", flash_size]
        if trace:
            self.argv.append("--trace")
        self.log = log
        self.proc = None
        self.url = None

    @property
    def pid(self):
        return self.proc.pid

    def start(self):
        import subprocess

        stderr = open(self.log, "ab") if self.log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=stderr)
        finally:
            if self.log:
                stderr.close()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.START_TIMEOUT)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("socket://"):
            code = self.stop()
            raise VBootloaderError("vbootloader did not start (exit %s, first line %r): see %s"
                                   % (code, line, self.log or "its stderr"))
        self.url = line
        return self

    def stop(self):
        import subprocess

        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait(self.STOP_TIMEOUT)
        self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
