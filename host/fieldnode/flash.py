"""Writing MicroPython firmware to a board in download mode, with esptool as a library.

    from fieldnode.flash import flash_firmware, flash_node

    result = flash_firmware("/dev/ttyUSB0", "ESP32_GENERIC-20241129-v1.24.1.bin")
    result = flash_firmware("socket://127.0.0.1:4000", "fw.bin", chip="esp32s3", erase=True,
                            progress=lambda done, total: ...)
    result = flash_node(fleet_dir, port, "fw.bin", node="node-7", operator="ana")  # + an audit record

`flash_firmware` checks the image file (ESP image magic 0xE9, segments, checksum, SHA-256 digest; a complete
firmware that starts with the bootloader, not a bare application image), opens the port, detects the chip,
refuses an image whose header names another chip, uploads esptool's flasher stub, optionally erases the
whole flash, writes the image at the chip's MicroPython offset (0x1000 on the ESP32, where a MicroPython
.bin starts with the second-stage bootloader; 0x0 on the S3/C3/C6: `boards.CHIPS`), verifies it by MD5
(esptool's verify_flash), resets the board and returns a FlashResult. Every failure is a FlashError whose
message is one line naming the problem and the fix; `.context` holds what was known (chip, mac, sha256,
stage). esptool's own output is captured, not printed (pass `log=` to see it).

`flash_node` does the same and appends a "flash" record to the fleet's audit log, whatever the outcome.

Exit codes of `fieldnode flash`: 0 flashed and verified; 1 failed (the board may need flashing again;
the message says what to do); 2 bad usage.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import audit, boards
from .errors import FieldnodeError

IMAGE_MAGIC = 0xE9
APP_DESC_MAGIC = b"\x32\x54\xcd\xab"   # esp_app_desc_t at the start of an application's first segment
DEFAULT_BAUD = 460800
ROM_BAUD = 115200
CONNECT_ATTEMPTS = 7
_DOWNLOAD_MODE = "hold BOOT, tap EN/RST, release BOOT"


class FlashError(FieldnodeError):
    def __init__(self, message, **context):
        super().__init__(message)
        self.context = context


@dataclass(frozen=True)
class ImageInfo:
    chip: str | None    # esptool chip name for the header's chip id (None: no known chip)
    chip_id: int
    size: int
    sha256: str         # of the whole file
    segments: int
    entry: int
    digest: bool        # a SHA-256 digest of the first image is appended (and matched)


@dataclass(frozen=True)
class FlashResult:
    port: str
    chip: str           # esptool chip name: esp32, esp32s3, esp32c3, esp32c6
    description: str    # e.g. "ESP32-D0WD-V3 (revision v3.0)"
    mac: str            # base MAC, aa:bb:cc:dd:ee:ff
    flash_size: str | None
    offset: int
    bytes_written: int
    sha256: str
    erased: bool
    verified: bool
    seconds: float

    def as_dict(self):
        return asdict(self)


def _chip_ids():
    from esptool.targets import CHIP_DEFS
    return {cls.IMAGE_CHIP_ID: name for name, cls in CHIP_DEFS.items() if name != "esp8266"}


def inspect_image(data, name="image"):
    """Check that `data` starts with a well-formed ESP32-family image; raise FlashError naming the flaw."""
    def bad(what):
        return FlashError("%s is not a valid ESP firmware image (%s): use the .bin for your board from the "
                          "MicroPython download page (not the .elf, .uf2 or .hex)" % (name, what))

    if len(data) < 24:
        raise bad("only %d bytes" % len(data))
    if data[0] != IMAGE_MAGIC:
        raise bad("first byte %#04x, an image starts with 0xe9" % data[0])
    count, entry = data[1], struct.unpack_from("<I", data, 4)[0]
    chip_id, hash_flag = struct.unpack_from("<H", data, 12)[0], data[23]
    if not 1 <= count <= 16:
        raise bad("%d segments, an image has 1 to 16" % count)
    if hash_flag not in (0, 1):
        raise bad("hash-appended flag %d" % hash_flag)
    pos, check, app = 24, 0xEF, False
    for i in range(count):
        if pos + 8 > len(data):
            raise bad("segment %d header past the end of the file" % i)
        _, length = struct.unpack_from("<II", data, pos)
        pos += 8
        if pos + length > len(data):
            raise bad("segment %d (%d bytes) runs past the end of the file" % (i, length))
        app = app or data[pos:pos + 4] == APP_DESC_MAGIC
        for b in data[pos:pos + length]:
            check ^= b
        pos += length
    pos += 15 - pos % 16
    if pos >= len(data):
        raise bad("truncated before its checksum")
    if data[pos] != check:
        raise bad("checksum %#04x, computed %#04x: the file is damaged, download it again" % (data[pos], check))
    pos += 1
    if hash_flag:
        if data[pos:pos + 32] != hashlib.sha256(data[:pos]).digest():
            raise bad("SHA-256 digest mismatch: the file is damaged, download it again")
    chip = _chip_ids().get(chip_id)
    if chip is None:
        raise bad("header names chip id %d, no ESP32-family chip" % chip_id)
    if app:
        raise FlashError("%s is a bare application image (it belongs at 0x10000), not a complete MicroPython "
                         "firmware (bootloader, partition table, application): use the .bin for your board "
                         "from the MicroPython download page" % name)
    return ImageInfo(chip=chip, chip_id=chip_id, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                     segments=count, entry=entry, digest=bool(hash_flag))


def read_image(path):
    """(bytes, ImageInfo) of the firmware file at `path`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FlashError("firmware %s not found: check the path" % path) from None
    except IsADirectoryError:
        raise FlashError("firmware %s is a directory: pass the .bin file" % path) from None
    except OSError as exc:
        raise FlashError("firmware %s cannot be read (%s): check the file and its permissions"
                         % (path, exc.strerror)) from None
    return data, inspect_image(data, str(path))


# -- esptool plumbing ----------------------------------------------------------------------------------------

class _Capture:
    """Stands in for esptool's logger while we drive it: keeps its messages (for `log=` and errors) and
    turns its progress bars into `progress(done, total)` calls."""

    def __init__(self, log=None, progress=None):
        from esp_pylib.logger import EspLogBase

        capture = self

        class Logger(EspLogBase):
            def print(self, *args, sep=" ", end="\n", **kwargs):
                capture.add(sep.join(str(a) for a in args) + end)

            def note(self, *args):
                capture.add("Note: " + " ".join(str(a) for a in args) + "\n")

            def warn(self, *args, suggestion=None):
                capture.add("Warning: " + " ".join(str(a) for a in args) + "\n")

            def err(self, *args, suggestion=None):
                capture.add("Error: " + " ".join(str(a) for a in args) + "\n")

            warning, error = warn, err

            def hint(self, *args):
                capture.add(" ".join(str(a) for a in args) + "\n")

            def debug(self, *args):
                pass

            def set_verbosity(self, mode):
                pass

            def progress_bar(self, cur_iter, total_iters, prefix="", suffix="", bar_length=30):
                if progress is not None:
                    progress(cur_iter, total_iters)

        self.logger = Logger()
        self.sink = log
        self.text = ""
        self._line = ""

    def add(self, text):
        self.text += text
        if self.sink is None:
            return
        self._line += text
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            if line.strip():
                self.sink(line.rstrip())

    @contextlib.contextmanager
    def installed(self):
        from esp_pylib.logger import EspLog

        capture = self

        class Stdout(io.TextIOBase):
            def write(self, s):
                capture.add(s)
                return len(s)

        previous = EspLog.instance
        EspLog.instance = self.logger
        # esptool binds one warning ("Chip was NOT reset", for ports without DTR/RTS) to its own logger at
        # import time; point it at ours for the duration too.
        reset_strategy = _reset_strategy()
        saved = reset_strategy.print_once if reset_strategy is not None else None
        if saved is not None:
            from esptool.util import PrintOnce
            reset_strategy.print_once = PrintOnce(self.logger.warn)
        try:
            with contextlib.redirect_stdout(Stdout()):
                yield self
        finally:
            EspLog.instance = previous
            if saved is not None:
                reset_strategy.print_once = saved


def _reset_strategy():
    try:
        from esptool.reset import ResetStrategy
    except ImportError:
        return None
    return ResetStrategy if hasattr(ResetStrategy, "print_once") else None


def _errno(exc):
    if getattr(exc, "errno", None):
        return exc.errno
    match = re.search(r"\[Errno (\d+)\]", str(exc))
    return int(match.group(1)) if match else None


def open_port(port):
    """Open `port` (a device path or a pyserial URL such as socket://HOST:PORT) exclusively, as esptool
    would, and turn the usual failures into one-line FlashErrors."""
    import serial

    try:
        ser = serial.serial_for_url(port, exclusive=True, do_not_open=True)
    except (ValueError, serial.SerialException) as exc:
        raise FlashError("--port %s is not a serial port or a socket://HOST:PORT address (%s)" % (port, exc)) \
            from None
    ser.baudrate = ROM_BAUD
    try:
        ser.open()
    except (serial.SerialException, OSError) as exc:
        code = _errno(exc)
        if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            raise FlashError("port %s not found: is the board plugged in? check the port name "
                             "(ls /dev/ttyUSB* /dev/ttyACM*)" % port) from None
        if code in (errno.EBUSY, errno.EAGAIN):
            raise FlashError("port %s is busy: close the program using it (serial monitor, mpremote, esptool, "
                             "another fieldnode) and retry" % port) from None
        if code == errno.EACCES:
            raise FlashError("no permission to open %s: add your user to the dialout group "
                             "(sudo usermod -aG dialout $USER) and log in again" % port) from None
        if code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT):
            raise FlashError("nothing is listening at %s: start the serial bridge (or `fieldnode vbootloader`) "
                             "first, or check the address" % port) from None
        raise FlashError("cannot open %s (%s): check the port and retry" % (port, exc)) from None
    return ser


def _chip_name(esp):
    from esptool.targets import CHIP_DEFS
    names = {cls.CHIP_NAME: name for name, cls in CHIP_DEFS.items()}
    return names.get(esp.CHIP_NAME, esp.CHIP_NAME.lower().replace("-", ""))


def _connect(ser, port, chip, attempts):
    from esptool.cmds import detect_chip
    from esptool.targets import CHIP_DEFS
    from esptool.util import FatalError
    from serial import SerialException

    try:
        if chip == "auto":
            return detect_chip(ser, ROM_BAUD, "default-reset", False, attempts)
        esp = CHIP_DEFS[chip](ser, ROM_BAUD)
        esp.connect("default-reset", attempts)
        return esp
    except FatalError as exc:
        wrong = re.search(r"This chip is (\S+), not (\S+)\.", str(exc))
        if wrong:
            actual = wrong.group(1).lower().replace("-", "")
            raise FlashError("the board on %s is an %s, not the %s given with --chip: pass --chip %s or --chip "
                             "auto" % (port, actual, chip, actual), chip=actual) from None
        raise FlashError("no bootloader answered on %s: put the board in download mode (%s) and check that "
                         "this is its port" % (port, _DOWNLOAD_MODE)) from None
    except SerialException as exc:
        raise FlashError("%s dropped the connection (%s): is another program using the board? reconnect it "
                         "and retry" % (port, str(exc).splitlines()[0])) from None


def flash_firmware(port, firmware_path, chip="auto", erase=False, baud=DEFAULT_BAUD, progress=None,
                   connect_attempts=CONNECT_ATTEMPTS, log=None, reset=True):
    """Flash `firmware_path` to the board on `port` and verify it; return a FlashResult.

    chip: "auto" (detect) or an esptool chip name the board must be; erase: erase the whole flash first
    (the filesystem, and with it the node's configuration and keys, is lost); baud: transfer rate after
    the stub is running; progress(done, total): called while writing; log(line): esptool's messages;
    reset: hard-reset the board into the new firmware when done. Raises FlashError.
    """
    from esptool.cmds import attach_flash, detect_flash_size, erase_flash, run_stub, verify_flash, write_flash
    from esptool.util import FatalError, NotImplementedInROMError, flash_size_bytes
    from serial import SerialException

    started = time.monotonic()
    if chip != "auto" and chip not in boards.CHIPS:
        raise FlashError("chip %s has no board in fieldnode: choose auto or one of %s"
                         % (chip, ", ".join(boards.CHIPS)))
    data, image = read_image(firmware_path)
    name = Path(firmware_path).name
    context = {"sha256": image.sha256, "image_chip": image.chip}
    if chip != "auto" and image.chip != chip:
        raise FlashError("%s is built for %s, not the %s given with --chip: use the %s firmware, or pass --chip "
                         "%s for an %s board" % (name, image.chip, chip, chip, image.chip, image.chip), **context)

    capture = _Capture(log, progress)
    ser = open_port(port)
    stage = "connecting"
    try:
        with capture.installed():
            esp = _connect(ser, port, chip, connect_attempts)
            detected = _chip_name(esp)
            context["chip"] = detected
            mac = ":".join("%02x" % b for b in esp.read_mac("BASE_MAC"))
            context["mac"] = mac
            description = esp.get_chip_description()
            if detected not in boards.CHIPS:
                raise FlashError("the board on %s is an %s, which fieldnode has no board for (supported: %s)"
                                 % (port, detected, ", ".join(boards.CHIPS)), **context)
            if image.chip != detected:
                raise _wrong_image(name, image.chip, detected, port, context)
            offset = boards.CHIPS[detected][0]
            context["offset"] = offset

            stage = "starting the flasher stub"
            esp = run_stub(esp)
            if baud > ROM_BAUD:
                stage = "changing the baud rate"
                try:
                    esp.change_baud(baud)
                except NotImplementedInROMError:
                    pass
            stage = "attaching the flash"
            attach_flash(esp)
            flash_size = detect_flash_size(esp)
            context["flash_size"] = flash_size
            if flash_size and offset + len(data) > flash_size_bytes(flash_size):
                raise FlashError("%s (%d bytes) does not fit in the %s flash at %#x: use the firmware for "
                                 "this board's flash size" % (name, len(data), flash_size, offset), **context)
            if erase:
                stage = "erasing the flash"
                erase_flash(esp)
                context["erased"] = True
            stage = "writing"
            write_flash(esp, [(offset, data)], flash_freq="keep", flash_mode="keep", flash_size="keep",
                        no_progress=progress is None)
            stage = "verifying"
            verify_flash(esp, [(offset, data)])
            if reset:
                stage = "resetting"
                esp.hard_reset()
    except FlashError as exc:
        exc.context.update(context, stage=stage)
        raise
    except FatalError as exc:
        raise _failed(port, name, stage, str(exc), context) from None
    except (SerialException, OSError) as exc:
        raise FlashError("lost the connection to %s while %s (%s): reconnect the board, put it in download "
                         "mode and flash again" % (port, stage, str(exc).splitlines()[0] if str(exc) else
                                                   type(exc).__name__), stage=stage, **context) from None
    finally:
        ser.close()
    return FlashResult(port=port, chip=detected, description=description, mac=mac, flash_size=flash_size,
                       offset=offset, bytes_written=len(data), sha256=image.sha256, erased=erase,
                       verified=True, seconds=round(time.monotonic() - started, 3))


def _wrong_image(name, built_for, chip, port, context):
    return FlashError("%s is built for %s but the board on %s is an %s: use the %s firmware, or connect "
                      "an %s board" % (name, built_for, port, chip, chip, built_for), **context)


def _failed(port, name, stage, message, context):
    first = message.strip().splitlines()[0] if message.strip() else "no reason given"
    if stage == "verifying" or "does not match" in first or "Verification failed" in first:
        return FlashError("verification failed: the flash at %#x on %s does not match %s; flash again, and if it "
                          "fails twice the board's flash may be faulty" % (context.get("offset", 0), port, name),
                          stage=stage, **context)
    return FlashError("flashing %s failed while %s (esptool: %s): check the cable, put the board in download "
                      "mode and flash again" % (port, stage, first), stage=stage, **context)


def flash_node(fleet_root, port, firmware_path, *, node=None, operator=None, **kwargs):
    """flash_firmware(...) and an audit record (action "flash") in `fleet_root`, on success or failure.
    A Ctrl-C is recorded as "interrupted" and re-raised."""
    root = Path(fleet_root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlashError("fleet %s cannot be created (%s): pass --fleet DIR on a writable disk"
                         % (root, exc.strerror)) from None
    if not os.access(root, os.W_OK):
        raise FlashError("fleet %s is not writable: nothing was flashed, because the audit record could not be "
                         "kept; fix the permissions or pass --fleet DIR" % root)
    details = {"port": port, "firmware": Path(firmware_path).name, "erase": bool(kwargs.get("erase"))}
    try:
        result = flash_firmware(port, firmware_path, **kwargs)
    except FlashError as exc:
        ctx = exc.context
        details.update({k: ctx[k] for k in ("chip", "offset", "flash_size", "stage") if k in ctx},
                       error=str(exc))
        audit.append(root, "flash", result="failed", node=node, mac=ctx.get("mac"), operator=operator,
                     hashes={"firmware": ctx["sha256"]} if ctx.get("sha256") else None, details=details)
        raise
    except KeyboardInterrupt:
        audit.append(root, "flash", result="interrupted", node=node, operator=operator, details=details)
        raise
    except Exception as exc:  # a bug or an unforeseen failure: still on record, then the traceback
        details["error"] = "internal error: %s: %s" % (type(exc).__name__, exc)
        audit.append(root, "flash", result="failed", node=node, operator=operator, details=details)
        raise
    details.update(chip=result.chip, offset=result.offset, flash_size=result.flash_size, bytes=result.bytes_written,
                   verified=result.verified)
    audit.append(root, "flash", result="ok", node=node, mac=result.mac, operator=operator,
                 hashes={"firmware": result.sha256}, details=details)
    return result
