# Runs on the MicroPython Unix port, never on the host: the virtual board's power-on, before its REPL.
#
#     micropython -i _boot.py        (started by fieldnode.bench.vboard with the FIELDNODE_VBOARD_* variables)
#
# Makes the interpreter look like a board's: the board's folder becomes "/" (a VfsPosix rooted there, the
# cwd too), sys.path becomes a board's ('', '.frozen', '/lib'), then boot.py and main.py run as a board runs
# them (main.py only if boot.py succeeded and the board is not coming back into the raw REPL; an exception
# prints its traceback and drops to the REPL; SystemExit ends the interpreter, which the vboard treats as
# a reset). The modules only a virtual board has (machine with unique_id/reset, os with fixes for the rooted
# VfsPosix, vboard, the ussl shim) are imported before the remount: afterwards the host's folders are out
# of reach.
#
# Talking to the vboard: two markers on the console, which it removes. After _READY_FS it passes the host's
# bytes on (a Ctrl-C then interrupts boot.py/main.py). After _READY_REPL it holds them back and answers on
# the FIFO named by FIELDNODE_VBOARD_ACK; only then does this script end, so that no Ctrl-C can arrive in the
# instant between the end of this script and the REPL's prompt (the Unix port has no handler for it there).
import sys

import os  # the os.py beside this script (sys.path[0] is the script's folder), not the Unix port's own

_READY_FS = "\x00vboard:fs\x00"
_READY_REPL = "\x00vboard:repl\x00"


def _vboard_run(name):
    """Run a boot file like a board (pyexec_file_if_exists): True unless it raised."""
    try:
        os.stat(name)
    except OSError:
        return True
    try:
        execfile(name)
    except SystemExit:
        raise
    except BaseException as exc:  # a board prints any exception, KeyboardInterrupt too
        sys.print_exception(exc)
        return False
    return True


def _vboard_start():
    import machine  # noqa: F401
    import vboard  # noqa: F401

    if os.getenv("FIELDNODE_VBOARD_COMPAT"):
        sys.path.append(os.getenv("FIELDNODE_VBOARD_COMPAT"))
        import ussl  # noqa: F401
    ack = open(os.getenv("FIELDNODE_VBOARD_ACK"), "rb")

    os.umount("/")
    os.mount(os.VfsPosix(os.getenv("FIELDNODE_VBOARD_FS")), "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    sys.argv[:] = []
    sys.stdout.write(_READY_FS)
    try:
        try:
            if _vboard_run("boot.py") and os.getenv("FIELDNODE_VBOARD_MODE") != "raw":
                _vboard_run("main.py")
        except KeyboardInterrupt:  # between the files: nothing left to interrupt
            pass
    finally:
        while True:
            try:
                sys.stdout.write(_READY_REPL)
                ack.read(1)
                break
            except KeyboardInterrupt:  # a Ctrl-C sent before the vboard held the host's bytes back
                pass
        ack.close()


_vboard_start()
del _vboard_start, _vboard_run, _READY_FS, _READY_REPL
