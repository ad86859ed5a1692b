"""`fieldnode deploy`: the node application onto a board (fieldnode.deploy)."""
import json

from . import arg, command, fleet_arg


@command("deploy", "compile the node application and copy what changed to a MicroPython board, verify it, "
                   "reset the board and report its first status line")
@arg("--port", required=True, metavar="PORT", help="the board's serial port (e.g. /dev/ttyUSB0, or a vboard's pty)")
@arg("--board", metavar="B", help="board data boards/B.json (default: the board's config.json says, or unix "
                                  "for a Unix port)")
@fleet_arg
@arg("--operator", metavar="NAME", help="who deploys, for the audit record (default: the OS user)")
@arg("--no-compile", action="store_true", help="copy the modules as .py source instead of compiling them")
@arg("--json", action="store_true", help="print the result as one JSON object")
@arg("--boot-timeout", type=float, default=30.0, metavar="S",
     help="seconds to wait for the node's first status line after the reset (default 30)")
def do_deploy(args):
    from ..deploy import deploy
    from ..errors import UsageError
    from ..progress import Progress

    if args.boot_timeout <= 0:
        raise UsageError("--boot-timeout: give a positive number of seconds")
    bar = None

    def progress(done, total):
        nonlocal bar
        if not total:
            return
        if bar is None:
            bar = Progress(total, "deploy", enabled=None if not args.json else False)
        bar.update(done=done)

    try:
        result = deploy(args.port, board_name=args.board, compile=not args.no_compile, progress=progress,
                        fleet=args.fleet, operator=args.operator, boot_timeout=args.boot_timeout)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(result.as_dict(), sort_keys=True))
        return
    libs = ", ".join(result.libs_installed) or "none needed"
    print(f"deployed to {result.port} ({result.board}): {len(result.files_copied)} files copied, "
          f"{len(result.files_skipped)} unchanged, {len(result.files_removed)} stale removed, "
          f"{result.bytes_sent} bytes sent; libraries installed: {libs}")
    print(f"app sha256 {result.app_sha256}" + (f"; node {result.node_id}" if result.node_id else "")
          + (f"; MAC {result.mac}" if result.mac else ""))
    if result.first_line:
        print(f"the node says: {result.first_line}")
