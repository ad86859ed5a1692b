"""Subscribe to the fleet's topics with the host certificate, verify and open every sealed message."""
import secrets
import ssl
import threading

import paho.mqtt.client as mqtt

from . import protocol
from .errors import FieldnodeError

TOPICS = ("fieldnode/+/reading", "fieldnode/+/alarm", "fieldnode/+/status")


class Monitor:
    """A verifying subscriber. Callbacks run on paho's network thread:

    on_message(opened: protocol.Opened, payload: bytes) — the sealed bytes as received —, on_status(node_id, text), on_reject(node_id, topic, reason, payload).
    `keys` maps node id -> {key_id: master key}; a node without keys has its messages rejected.
    """

    def __init__(self, host, port, ca, cert, key, keys, on_message=None, on_status=None, on_reject=None):
        self.keys = keys
        self.on_message = on_message or (lambda opened, payload: None)
        self.on_status = on_status or (lambda node, text: None)
        self.on_reject = on_reject or (lambda node, topic, reason, payload: None)
        self._host, self._port = host, port
        self._subscribed = threading.Event()
        self._connect_error = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="fieldnode-monitor-" + secrets.token_hex(4))
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._connect_error = str(reason_code)
            self._subscribed.set()
            return
        client.subscribe([(t, 1) for t in TOPICS])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._subscribed.set()

    def _on_message(self, client, userdata, msg):
        parts = msg.topic.split("/")
        if len(parts) != 3:
            return
        node, kind = parts[1], parts[2]
        if kind == "status":
            self.on_status(node, msg.payload.decode("ascii", "replace"))
            return
        try:
            opened = protocol.open_message(msg.payload, node, self.keys.get(node, {}))
        except protocol.ProtocolError as exc:
            self.on_reject(node, msg.topic, exc.reason, msg.payload)
            return
        expected = "reading" if opened.type == protocol.TYPE_READING else "alarm"
        if kind != expected:
            self.on_reject(node, msg.topic, "wrong-topic", msg.payload)
            return
        self.on_message(opened, msg.payload)

    def start(self, timeout=15):
        try:
            self.client.connect(self._host, self._port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            raise FieldnodeError(f"cannot reach the broker at {self._host}:{self._port} ({exc}): "
                                 "is it running and is this the fleet's CA?") from None
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise FieldnodeError(f"no answer from the broker at {self._host}:{self._port} within {timeout}s")
        if self._connect_error:
            self.stop()
            raise FieldnodeError(f"broker refused the host certificate: {self._connect_error}")
        return self

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
