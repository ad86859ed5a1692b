"""`fieldnode demo`."""
from ..errors import UsageError
from . import arg, command


@command("demo", "run virtual nodes against a local mosquitto with mutual TLS and show verified readings")
@arg("--nodes", type=int, default=3, metavar="N", help="number of virtual nodes (default 3)")
@arg("--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
@arg("--json", action="store_true", help="one JSON object per verified message on stdout")
@arg("--interval", type=float, default=1.0, metavar="S", help="seconds between readings (default 1)")
def do_demo(args):
    from ..demo import run_demo

    if not 1 <= args.nodes <= 500:
        raise UsageError("--nodes: give 1 to 500 nodes")
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration: give a positive number of seconds")
    run_demo(args.nodes, args.duration, args.json, interval_s=args.interval)
