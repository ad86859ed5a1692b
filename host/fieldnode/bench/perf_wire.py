"""Bytes on the wire for one reading: fieldnode's sealed message next to the plaintext telemetry of Tasmota and
ESPHome for the same reading, each as real MQTT 3.1.1 packets (the encoder is here; nothing is hard-coded).

    wire_figures(node_id="node-0042")   # {"sealed_reading_bytes": 58, "fieldnode": {...}, "tasmota": {...}, ...}

What each sends per reading:

- fieldnode: one PUBLISH, QoS 1, to `fieldnode/<node>/reading` carrying the 58-byte sealed message
  (docs/protocol.md), and the broker's PUBACK.
- Tasmota style: one PUBLISH to `tele/<topic>/SENSOR` with its JSON telemetry ({"Time":...,"BME280":{...},
  "PressureUnit":"hPa","TempUnit":"C"}, one decimal each, the dew point it adds); Tasmota publishes at QoS 0.
- ESPHome style: three PUBLISHes, `<node>/sensor/<name>/state` with a plain number each (temperature and
  humidity with one decimal, pressure in hPa with one); ESPHome publishes at QoS 0, retained.

Both are also given at QoS 1 (packet id + PUBACK), which is what delivery that can be checked costs.
"""
import math
import time

from .. import protocol

PUBACK = 0x40


def remaining_length(n):
    """MQTT's variable-length integer: 7 bits a byte, high bit = more follows."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def publish_packet(topic, payload, qos=0, retain=False, packet_id=1):
    """A PUBLISH packet (MQTT 3.1.1, section 3.3)."""
    topic = topic.encode() if isinstance(topic, str) else topic
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += packet_id.to_bytes(2, "big")
    body += payload
    return bytes((0x30 | qos << 1 | int(retain),)) + remaining_length(len(body)) + body


def puback_packet(packet_id=1):
    return bytes((PUBACK, 2)) + packet_id.to_bytes(2, "big")


def _exchange(messages, qos, retain=False):
    """{"packets", "publish_bytes", "puback_bytes", "total_bytes", "payload_bytes"} for publishing `messages`
    ([(topic, payload)])."""
    publishes = [publish_packet(t, p, qos, retain, i + 1) for i, (t, p) in enumerate(messages)]
    acks = [puback_packet(i + 1) for i in range(len(messages))] if qos else []
    pub = sum(len(p) for p in publishes)
    ack = sum(len(a) for a in acks)
    return {"qos": qos, "packets": len(publishes) + len(acks), "payload_bytes": sum(len(p) for _, p in messages),
            "publish_bytes": pub, "puback_bytes": ack, "total_bytes": pub + ack}


def dew_point(t, rh):
    """Magnus formula, as Tasmota reports it alongside temperature and humidity."""
    a, b = 17.62, 243.12
    g = math.log(rh / 100.0) + a * t / (b + t)
    return b * g / (a - g)


def tasmota_message(topic, t, h, p, when):
    payload = ('{"Time":"%s","BME280":{"Temperature":%.1f,"Humidity":%.1f,"DewPoint":%.1f,"Pressure":%.1f},'
               '"PressureUnit":"hPa","TempUnit":"C"}'
               % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)), t, h, dew_point(t, h), p / 100.0))
    return [("tele/%s/SENSOR" % topic, payload.encode())]


def esphome_messages(node, t, h, p):
    return [("%s/sensor/temperature/state" % node, b"%.1f" % t), ("%s/sensor/humidity/state" % node, b"%.1f" % h),
            ("%s/sensor/pressure/state" % node, b"%.1f" % (p / 100.0))]


def wire_figures(node_id="node-0042", reading=(21.53, 45.21, 101325.0), when=1767225600):
    """The sealed reading's size and the three styles' packets for one reading (a real seal, real encodings)."""
    t, h, p = reading
    sealed = protocol.seal(bytes(32), node_id, 1, 1, 1, protocol.Reading(when, 1, t, h, p))
    ours = _exchange([("fieldnode/%s/reading" % node_id, sealed)], qos=1)
    tasmota = tasmota_message(node_id, t, h, p, when)
    esphome = esphome_messages(node_id, t, h, p)
    return {
        "sealed_reading_bytes": len(sealed),
        "mqtt_bytes_per_reading": ours["total_bytes"],
        "fieldnode": dict(ours, topic="fieldnode/%s/reading" % node_id),
        "tasmota": {"default": dict(_exchange(tasmota, qos=0), topic=tasmota[0][0], payload=tasmota[0][1].decode()),
                    "qos1": _exchange(tasmota, qos=1)},
        "esphome": {"default": dict(_exchange(esphome, qos=0, retain=True), topics=[m[0] for m in esphome],
                                    payloads=[m[1].decode() for m in esphome]),
                    "qos1": _exchange(esphome, qos=1, retain=True)},
    }
