# Runs on the MicroPython Unix port, never on the host: the perf bench's baseline (fieldnode.bench.perf_node).
#
#     micropython -m perf_bare CYCLES QOS BROKER_HOST BROKER_PORT BUS_HOST:PORT NODE_ID
#                                                                    (cwd: a provisioned node's folder)
#
# The least a script can do for the same job: read the emulated BME280 with the same driver over the same
# bench bus, format the three values as text and publish them with bare umqtt.simple over mutual TLS (the
# node's certificate, the same broker). No seal, no flash queue, no health or alarm checks, no reconnects.
# "perf: mark" before the first cycle and after the last.
import ssl
import sys

from node.hal.sockbus import SocketI2C
from node.sensors.bme280 import BME280
import umqtt.simple
from umqtt.simple import MQTTClient


class _NoDelay:
    # umqtt.simple's socket module, with TCP_NODELAY on each new socket as node/link.py sets it: otherwise every
    # publish waits ~40 ms for the broker's delayed ACK (the time is idle, not work, but it slows the bench)
    def __init__(self, mod):
        self._mod = mod
        self.getaddrinfo = mod.getaddrinfo

    def socket(self, *args):
        s = self._mod.socket(*args)
        s.setsockopt(6, 1, 1)
        return s


umqtt.simple.socket = _NoDelay(umqtt.simple.socket)


def _read(name):
    with open(name, "rb") as f:
        return f.read()


def main(cycles, qos, host, port, bus, node_id):
    bus_host, bus_port = bus.rsplit(":", 1)
    sensor = BME280(SocketI2C(bus_host, int(bus_port), node_id), 0x76)
    tls = {"key": _read("node.key.der"), "cert": _read("node.der"), "cadata": _read("ca.der"),
           "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "localhost"}
    client = MQTTClient(node_id, host, port, keepalive=60, ssl=True, ssl_params=tls)
    client.connect()
    topic = ("fieldnode/%s/plain" % node_id).encode()
    print("perf: mark")
    for _ in range(cycles):
        t, h, p = sensor.read()
        client.publish(topic, ("%.2f %.2f %.2f" % (t, h, p)).encode(), False, qos)
    print("perf: mark")
    client.disconnect()


if __name__ == "__main__":
    a = sys.argv
    main(int(a[1]), int(a[2]), a[3], int(a[4]), a[5], a[6])
