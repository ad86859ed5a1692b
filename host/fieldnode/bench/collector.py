"""Monitor callbacks that keep what arrived, with a bounded wait on a condition over it (tests, bench)."""
import threading


class Collector:
    """Monitor callbacks that keep everything, plus a bounded wait on a condition over what arrived."""

    def __init__(self):
        self.messages = []  # fieldnode.protocol.Opened
        self.payloads = {}  # (node, seq) -> sealed bytes as received
        self.rejected = []  # (node, topic, reason, payload)
        self.statuses = []  # (node, text)
        self._cond = threading.Condition()

    def _add(self, where, item):
        with self._cond:
            where.append(item)
            self._cond.notify_all()

    def on_message(self, opened, payload):
        self.payloads[(opened.node_id, opened.seq)] = payload
        self._add(self.messages, opened)

    def on_reject(self, node, topic, reason, payload):
        self._add(self.rejected, (node, topic, reason, payload))

    def on_status(self, node, text):
        self._add(self.statuses, (node, text))

    def callbacks(self):
        return {"on_message": self.on_message, "on_reject": self.on_reject, "on_status": self.on_status}

    def wait_for(self, predicate, timeout=20.0, what="condition"):
        """Wait until predicate(self) is truthy; return its value. Fails the test after `timeout`."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError("timed out after %ss waiting for %s" % (timeout, what))
            return predicate(self)

    def of(self, node, type_name=None):
        with self._cond:
            return [m for m in self.messages if m.node_id == node
                    and (type_name is None or m.as_dict()["type"] == type_name)]
