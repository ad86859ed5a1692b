# Runs on the virtual board only (fieldnode vboard): the Unix port's os module, fixed where the board's
# filesystem (a VfsPosix rooted at the board's folder, mounted on "/") differs from a board's LittleFS:
# - rename(): the rooted VfsPosix maps both absolute paths into one buffer, so the old name is lost;
#   relative paths are passed through untouched, so both go relative to the current directory.
# - ilistdir(): entries carry the file size as a 4th item, as on LittleFS (mpremote's `fs ls` shows it).
import uos
from uos import *  # noqa: F401,F403


def _relative(path):
    if not path.startswith("/"):
        return path
    depth = len([part for part in uos.getcwd().split("/") if part])
    return "../" * depth + path.lstrip("/") or "."


def rename(old, new):
    uos.rename(_relative(old), _relative(new))


def ilistdir(path="."):
    base = "" if path in ("", ".") else path if path.endswith("/") else path + "/"
    for entry in uos.ilistdir(path):
        if len(entry) == 3:
            size = uos.stat(base + entry[0])[6] if entry[1] == 0x8000 else 0
            entry = entry + (size,)
        yield entry
