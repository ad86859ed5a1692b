"""Fetch the MicroPython libraries the node needs, by name, and check them against pinned hashes.

pip cannot install these (upip-format sdists without setup.py), so we download the sdist with the
pypi-simple client, verify its sha256 and unpack only the module files into a git-ignored folder that
the Unix-port node gets on its path (and that `fieldnode deploy` copies to boards lacking them).
"""
import argparse
import hashlib
import io
import sys
import tarfile
import tempfile
from pathlib import Path

# name, version, sha256 of the sdist, module files to take (path inside the sdist's top folder)
PINNED = [
    ("micropython-umqtt.simple", "1.3.4",
     "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f",
     ["umqtt/simple.py"]),
]


class FetchError(Exception):
    pass


def fetch(name, version, sha256):
    """Return the sdist bytes of name==version after checking sha256."""
    from pypi_simple import PyPISimple

    with PyPISimple() as client:
        page = client.get_project_page(name)
        for pkg in page.packages:
            if pkg.version == version and pkg.package_type == "sdist":
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / pkg.filename
                    client.download_package(pkg, path=path, timeout=60)
                    data = path.read_bytes()
                break
        else:
            raise FetchError(f"{name} {version}: no sdist in the package index")
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise FetchError(f"{name} {version}: sha256 {got} does not match the pinned {sha256}")
    return data


def unpack(data, members, dest):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        by_suffix = {}
        for info in tar.getmembers():
            parts = info.name.split("/", 1)
            if len(parts) == 2 and info.isfile():
                by_suffix[parts[1]] = info
        for member in members:
            if member not in by_suffix:
                raise FetchError(f"{member} missing from the sdist")
            target = dest / member
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(tar.extractfile(by_suffix[member]).read())
            tmp.replace(target)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=Path("build/mpylib"))
    args = ap.parse_args(argv)
    try:
        for name, version, sha256, members in PINNED:
            if all((args.dest / m).is_file() for m in members):
                continue
            unpack(fetch(name, version, sha256), members, args.dest)
            print(f"fetched {name} {version} (sha256 ok) into {args.dest}")
    except FetchError as exc:
        print(f"mpy_deps: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
