"""Subscribe to the fleet's topics with the host certificate, verify and open every sealed message.

Everything under `fieldnode/` is looked at (`classify`): readings and alarms are opened and verified,
statuses checked, and anything else on a node's topics is rejected with a reason, never dropped silently.
`fieldnode/<node>/cmd/...` is the host-to-node channel and is not ours to judge: it is ignored.

Reasons, beyond protocol.REASONS (which come from `open_message`):

    unknown-node      the fleet holds no accepted payload key for the node in the topic
    wrong-topic       a message that verifies, on the other kind's topic (a reading on .../alarm)
    unexpected-topic  a topic under fieldnode/ that is none of reading, alarm, status, cmd/...
    bad-status        a status that is not short printable ASCII (binary junk, a sealed message, ...)
"""
import secrets
import ssl
import threading

import paho.mqtt.client as mqtt

from . import pki, protocol
from .errors import FieldnodeError

TOPICS = ("fieldnode/+/reading", "fieldnode/+/alarm", "fieldnode/+/status")
SUBSCRIPTION = "fieldnode/#"  # TOPICS and everything else a node could put under its namespace
REASONS = protocol.REASONS + ("wrong-topic", "unknown-node", "unexpected-topic", "bad-status")
STATUS_MAX = 64
_KIND_TYPE = {"reading": protocol.TYPE_READING, "alarm": protocol.TYPE_ALARM}

# classify() results: (MESSAGE, node, Opened) | (REJECT, node, reason) | (STATUS, node, text) | (IGNORE, node, None)
MESSAGE, REJECT, STATUS, IGNORE = "message", "reject", "status", "ignore"


def _valid_node_id(node):
    try:
        protocol.check_node_id(node)
    except ValueError:
        return False
    return True


def classify(topic, payload, keys):
    """Judge one received MQTT message; never raises for anything a client can send.

    `keys` maps node id -> {key_id: master key} (a dict or fleet.KeyRing). The node id is the topic's
    second level, which the broker's ACL ties to the publishing certificate."""
    parts = topic.split("/")
    node = parts[1] if len(parts) > 1 else None
    if len(parts) < 3 or parts[0] != "fieldnode" or not node:
        return REJECT, node, "unexpected-topic"
    kind = parts[2]
    if kind == "cmd":
        return IGNORE, node, None
    if len(parts) != 3 or kind not in ("reading", "alarm", "status"):
        return REJECT, node, "unexpected-topic"
    if kind == "status":
        if len(payload) > STATUS_MAX or any(b < 0x20 or b > 0x7E for b in payload):
            return REJECT, node, "bad-status"
        return STATUS, node, bytes(payload).decode("ascii")
    node_keys = keys.get(node) if _valid_node_id(node) else None
    if not node_keys:
        return REJECT, node, "unknown-node"
    try:
        opened = protocol.open_message(payload, node, node_keys)
    except protocol.ProtocolError as exc:
        return REJECT, node, exc.reason
    if opened.type != _KIND_TYPE[kind]:
        return REJECT, node, "wrong-topic"
    return MESSAGE, node, opened


class Monitor:
    """A verifying subscriber. Callbacks run on paho's network thread:

    on_message(opened: protocol.Opened, payload: bytes) — the sealed bytes as received —, on_status(node_id, text), on_reject(node_id, topic, reason, payload).
    `keys` maps node id -> {key_id: master key}; a node without keys has its messages rejected.

    By default a throwaway session (a random client id, clean session). `client_id` with
    `clean_session=False` makes a persistent session: the broker keeps the subscription and queues QoS 1
    messages while this client is away (fieldnode.ingest uses that, with `manual_ack`). A client id starts
    with pki.HOST_PREFIX, which no node id may: no node's credentials can then take this session over.
    """

    def __init__(self, host, port, ca, cert, key, keys, on_message=None, on_status=None, on_reject=None,
                 client_id=None, clean_session=True, manual_ack=False):
        self.keys = keys
        self.on_message = on_message or (lambda opened, payload: None)
        self.on_status = on_status or (lambda node, text: None)
        self.on_reject = on_reject or (lambda node, topic, reason, payload: None)
        self._host, self._port = host, port
        self._subscribed = threading.Event()
        self._connect_error = None
        client_id = pki.check_host_name(client_id or pki.HOST_PREFIX + "monitor-" + secrets.token_hex(4))
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=clean_session, protocol=mqtt.MQTTv311, manual_ack=manual_ack)
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
        client.subscribe(SUBSCRIPTION, 1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._subscribed.set()

    def _on_message(self, client, userdata, msg):
        self.dispatch(msg.topic, msg.payload)

    def dispatch(self, topic, payload):
        """Classify one message and call the matching callback."""
        what, node, value = classify(topic, payload, self.keys)
        if what == MESSAGE:
            self.on_message(value, payload)
        elif what == STATUS:
            self.on_status(node, value)
        elif what == REJECT:
            self.on_reject(node, topic, value, payload)

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
