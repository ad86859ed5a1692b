# MQTT over mutual TLS through umqtt.simple, for both flavours of the library:
#  - micropython-lib's umqtt.simple 1.3.x (PyPI, used on the Unix port): ssl=True, ssl_params={...}, `import ussl`
#  - the umqtt.simple frozen into current ESP32 firmware: ssl=<ssl.SSLContext>
import ssl

from umqtt.simple import MQTTClient


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class LinkError(Exception):
    pass


class Link:
    def __init__(self, cfg):
        self._cfg = cfg
        base = "fieldnode/" + cfg.node_id
        self.reading_topic = (base + "/reading").encode()
        self.alarm_topic = (base + "/alarm").encode()
        self.status_topic = (base + "/status").encode()
        self._tls = None
        self.client = None

    def _tls_material(self):
        if self._tls is None:
            files = self._cfg.files
            try:
                self._tls = (_read(files["key"]), _read(files["cert"]), _read(files["ca"]))
            except OSError as exc:
                raise LinkError("TLS files missing (%s): re-provision the node" % exc)
        return self._tls

    def _client(self):
        key, cert, ca = self._tls_material()
        b = self._cfg.broker
        server_name = b.get("server_name") or b["host"]
        args = (self._cfg.node_id, b["host"], b["port"])
        kw = {"keepalive": b.get("keepalive_s", 60)}
        try:
            # 1.3.x keeps ssl_params; a newer client rejects the keyword, so we know which it is.
            return MQTTClient(*args, ssl=True, ssl_params={
                "key": key, "cert": cert, "cadata": ca,
                "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": server_name}, **kw)
        except TypeError:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_cert_chain(cert, key)
            ctx.load_verify_locations(cadata=ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
            # This flavour uses the broker host itself as the TLS server name.
            return MQTTClient(*args, ssl=ctx, **kw)

    def connect(self):
        self.close()
        client = self._client()
        client.set_last_will(self.status_topic, b"offline", retain=True, qos=1)
        client.connect(clean_session=True)
        self.client = client
        client.publish(self.status_topic, b"online", retain=True, qos=1)

    @property
    def up(self):
        return self.client is not None

    def publish(self, topic, msg):
        """QoS 1 publish; returns once the broker acknowledged it (PUBACK). Raises OSError on link loss."""
        try:
            self.client.publish(topic, msg, qos=1)
        except Exception:
            self.close()
            raise

    def close(self):
        client, self.client = self.client, None
        if client is not None:
            try:
                client.sock.close()
            except Exception:  # the socket may already be gone; nothing else to release
                pass
