"""A fake Board (fieldnode.board.Board's API) over an in-memory filesystem, for provisioning unit tests.

    bench = FakeBench()
    bench.add("/dev/ttyUSB0", platform="esp32", machine="Generic ESP32 module with ESP32", mac="aa:bb:...")
    provision(fleet, "node-1", "/dev/ttyUSB0", settings, open_board=bench.open)
    bench.boards["/dev/ttyUSB0"].fs          # what the board holds now
    bench.boards[port].fail_on_write = "payload.k1.key"   # a write that raises (cable pulled)
"""
import hashlib

from fieldnode.errors import FieldnodeError


class FakeBoardError(FieldnodeError):
    pass


class FakeBoard:
    def __init__(self, port, platform="linux", machine="linux [GCC 12] version", mac=None):
        self.port = port
        self.fs = {}
        self._info = {"micropython": "1.24.1", "mpy": "6.3", "platform": platform, "machine": machine, "mac": mac}
        self.fail_on_write = None     # file name whose write raises FakeBoardError
        self.corrupt_on_write = None  # file name stored with one byte flipped
        self.on_write = None          # callable(name) run before each write (e.g. to kill the process)
        self.writes = []
        self.resets = 0
        self.open_count = 0
        self.unreachable = False

    # context manager, as Board
    def __enter__(self):
        if self.unreachable:
            raise FakeBoardError("cannot open %s: no such port: plug the board in" % self.port)
        self.open_count += 1
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def _norm(path):
        return path.lstrip("/")

    def info(self):
        return dict(self._info)

    def sha256(self, path):
        data = self.fs.get(self._norm(path))
        return None if data is None else hashlib.sha256(data).hexdigest()

    def sha256_many(self, paths):
        self.round_trips = getattr(self, "round_trips", 0) + 1
        return {p: self.sha256(p) for p in paths}

    def read_file(self, path):
        try:
            return self.fs[self._norm(path)]
        except KeyError:
            raise FakeBoardError("%s: no such file on the board" % path) from None

    def write_file(self, path, data, progress=None):
        name = self._norm(path)
        if self.on_write:
            self.on_write(name)
        if name == self.fail_on_write:
            raise FakeBoardError("write of %s failed: the board stopped answering: check the cable" % name)
        self.writes.append(name)
        data = bytes(data)
        if name == self.corrupt_on_write:
            data = data[:-1] + bytes([data[-1] ^ 1])
        self.fs[name] = data

    def listdir(self, path="/"):
        return sorted(self.fs)

    def remove(self, path):
        self.fs.pop(self._norm(path), None)

    def hard_reset(self):
        self.resets += 1

    def soft_reset(self):
        self.resets += 1


class FakeBench:
    def __init__(self):
        self.boards = {}

    def add(self, port, **kw):
        self.boards[port] = FakeBoard(port, **kw)
        return self.boards[port]

    def open(self, port):
        try:
            return self.boards[port]
        except KeyError:
            raise FakeBoardError("cannot open %s: no such port: check the cable and --port" % port) from None
