"""`fieldnode` command line: parse, call a typed function, print. Errors become one line and an exit code."""
import argparse
import sys

from . import __version__
from .errors import FieldnodeError

# name -> (handler, add_arguments); handlers take the parsed namespace and return an exit code.
COMMANDS = {}


def command(name, help):
    def register(fn):
        COMMANDS[name] = (fn, help, getattr(fn, "_args", []))
        return fn
    return register


def arg(*names, **kw):
    def add(fn):
        fn._args = [(names, kw)] + getattr(fn, "_args", [])
        return fn
    return add


def build_parser():
    parser = argparse.ArgumentParser(prog="fieldnode", description="fieldnode sensor-node tooling")
    parser.add_argument("--version", action="version", version="fieldnode " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (fn, help, args) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        for names, kw in args:
            p.add_argument(*names, **kw)
        p.set_defaults(handler=fn)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except FieldnodeError as exc:
        print("fieldnode: %s" % exc, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
