"""`fieldnode vboard`: a virtual board on a pseudo-terminal (fieldnode.bench.vboard)."""
from . import arg, command


@command("vboard", "run a virtual board (MicroPython Unix port) behind a serial port that mpremote and "
                   "fieldnode drive; prints the port as the first line")
@arg("--fs", metavar="DIR", help="the board's filesystem, kept across runs "
                                 "(default: ~/.local/share/fieldnode/vboard)")
@arg("--board", default="unix", metavar="B", help="board data (boards/B.json) of the Unix-port board (default unix)")
@arg("--sensor-bus", metavar="HOST:PORT", help="use this running bench sensor bus instead of serving an emulated "
                                               "BME280 here")
@arg("--bus", metavar="NAME", help="bus name reported for the node's config (default: the folder's name)")
@arg("--mac", metavar="MAC", help="the board's MAC, e.g. 02:00:00:12:34:56 (default: derived from the folder)")
@arg("--heapsize", default="512k", metavar="SIZE", help="MicroPython heap, e.g. 512k (default)")
def do_vboard(args):
    from ..bench import vboard

    vboard.run(args.fs or vboard.default_fs(), board=args.board, sensor_bus=args.sensor_bus, bus=args.bus,
               mac=args.mac, heapsize=args.heapsize)
