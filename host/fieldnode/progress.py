"""A one-line progress bar on stderr for flash, deploy and batch runs (quiet when stderr is not a tty,
so field scripts and CI logs get clean output; `--json` reports carry the results instead)."""
import sys
import time


class Progress:
    def __init__(self, total, label, stream=None, enabled=None, width=30):
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.width = width
        self.done = 0
        self._last = 0.0

    def update(self, done=None, advance=0):
        self.done = min(self.total, self.done + advance if done is None else done)
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done == self.total):
            self._last = now
            filled = self.width * self.done // self.total
            self.stream.write("\r%s [%s%s] %3d%%" % (self.label, "#" * filled, "." * (self.width - filled),
                                                      100 * self.done // self.total))
            self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
