"""`fieldnode flash`: write MicroPython to a board in download mode, verify it, record it (fieldnode.flash)."""
import json
import sys

from .. import boards
from ..errors import UsageError
from . import arg, command, fleet_arg


@command("flash", "write MicroPython firmware to a board in download mode at its chip's offset, verify it "
                  "and record it in the audit log (exit 0 flashed and verified, 1 failed, 2 bad usage)")
@fleet_arg
@arg("--port", required=True, metavar="PORT", help="serial port (/dev/ttyUSB0) or socket://HOST:PORT")
@arg("--firmware", required=True, metavar="FILE.bin", help="the MicroPython .bin for the board's chip")
@arg("--chip", default="auto", choices=("auto",) + tuple(boards.CHIPS),
     help="the chip the board must have (default: detect it)")
@arg("--erase", action="store_true",
     help="erase the whole flash first (also wipes the node's filesystem: config, keys, counters)")
@arg("--baud", type=int, default=460800, metavar="N", help="transfer baud rate (default 460800)")
@arg("--connect-attempts", type=int, default=7, metavar="N",
     help="how often to try reaching the bootloader (default 7)")
@arg("--node", metavar="NODE_ID", help="the node this board becomes, for the audit record")
@arg("--operator", metavar="NAME", help="who is flashing (default: the OS user)")
@arg("--json", action="store_true", help="print the result as one JSON object")
@arg("--verbose", action="store_true", help="show esptool's messages on stderr")
def do_flash(args):
    from .. import fleet, pki
    from ..flash import flash_node
    from ..progress import Progress

    if not 9600 <= args.baud <= 5000000:
        raise UsageError("--baud: give a rate from 9600 to 5000000 (e.g. 115200 or 460800)")
    if args.connect_attempts < 1:
        raise UsageError("--connect-attempts: give at least 1")
    if args.node is not None:
        try:
            pki.check_node_id(args.node)
        except UsageError as exc:
            raise UsageError("--node: %s" % exc) from None

    bar = []

    def progress(done, total):
        if not bar or bar[0].total != max(total, 1):
            if bar:
                bar.pop().close()
            bar.append(Progress(total, "writing"))
        bar[0].update(done)

    def log(line):
        print("esptool: " + line, file=sys.stderr, flush=True)

    try:
        result = flash_node(fleet.resolve(args.fleet), args.port, args.firmware, node=args.node,
                            operator=args.operator, chip=args.chip, erase=args.erase, baud=args.baud,
                            connect_attempts=args.connect_attempts, progress=progress,
                            log=log if args.verbose else None)
    finally:
        if bar:
            bar[0].close()
    if args.json:
        print(json.dumps(dict(result.as_dict(), node=args.node), sort_keys=True))
    else:
        print("flashed %s %s (%s) on %s: %s bytes at %#x, sha256 %s, %sverified"
              % (result.chip, result.mac, result.description, result.port, result.bytes_written, result.offset,
                 result.sha256[:16], "erased first, " if result.erased else ""))
