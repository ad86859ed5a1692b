"""`fieldnode` command line: parse, call a typed function, print. Errors become one line and an exit code.

Exit codes: 0 success; 1 the operation failed (the message says why and what to do); 2 bad usage;
130 interrupted (Ctrl-C).
"""
import argparse
import sys

from . import __version__
from .commands import load_all
from .errors import FieldnodeError


def build_parser():
    parser = argparse.ArgumentParser(prog="fieldnode", description="fieldnode sensor-node tooling")
    parser.add_argument("--version", action="version", version="fieldnode " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups = {}
    for name, (fn, help, args) in sorted(load_all().items()):
        where = sub
        if " " in name:
            group, name = name.split(" ", 1)
            if group not in groups:
                g = sub.add_parser(group, help=group + " commands")
                groups[group] = g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            where = groups[group]
        p = where.add_parser(name, help=help, description=help)
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
