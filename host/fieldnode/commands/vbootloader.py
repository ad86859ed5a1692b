"""`fieldnode vbootloader`: an emulated ESP32 serial bootloader for the bench (see bench/vbootloader.py)."""
import signal
import sys

from ..errors import UsageError
from . import arg, command

_CHIPS = ("esp32", "esp32s3", "esp32c3", "esp32c6")
_SIZES = ("1MB", "2MB", "4MB", "8MB", "16MB")


def _listen_address(text):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError("--listen: expected HOST:PORT (PORT 0 = any free port), got %r" % text)
    return host, int(port)


def _stop(signum, frame):
    raise SystemExit(0)


@command("vbootloader", "emulate an ESP32 chip in download mode on a TCP port (for esptool and `fieldnode "
                        "flash`); prints the port URL as the first line and runs until stopped")
@arg("--chip", required=True, choices=_CHIPS, help="the chip to emulate")
@arg("--flash-image", required=True, metavar="FILE",
     help="the flash contents: byte N of FILE is flash address N, beyond its end the flash is erased "
          "(created empty if missing)")
@arg("--mac", metavar="MAC", help="the chip's MAC address (default: derived from FILE's path)")
@arg("--flash-size", choices=_SIZES, help="flash size the chip reports (default: its board's, e.g. 4MB)")
@arg("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
     help="where to listen (default 127.0.0.1 on a free port)")
@arg("--trace", action="store_true", help="log every loader command on stderr")
def do_vbootloader(args):
    from ..bench import vbootloader as vb

    mac = None
    if args.mac:
        try:
            mac = vb.parse_mac(args.mac)
        except ValueError as exc:
            raise UsageError("--mac: %s" % exc) from None
    host, port = _listen_address(args.listen)
    server = vb.VirtualBootloader(args.chip, args.flash_image, mac=mac, flash_size=args.flash_size,
                                  host=host, port=port, trace=vb.stderr_trace if args.trace else None)
    try:
        try:
            server.listen()
        except OSError as exc:
            raise UsageError("--listen %s: cannot listen there (%s): pick another port" % (args.listen, exc))
        print(server.url, flush=True)
        print("vbootloader: %s (%s flash, MAC %s, MicroPython at %#x) in download mode on %s; flash image %s; "
              "stop with Ctrl-C" % (args.chip, server.flash_size, server.mac, server.chip.micropython_offset(),
                                    server.url, args.flash_image), file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, _stop)
        server.serve_forever()
    finally:
        server.close()
