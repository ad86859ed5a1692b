# Sealing on the node (docs/protocol.md, version 1): AES-256-CBC, then HMAC-SHA256 over the node id, the
# header, the IV and the ciphertext. No I/O besides os.urandom for the IV.
#
# A Sealer derives the working keys once and writes every message into one preallocated buffer: the body
# is packed in place, encrypted in place, and the tag written after it. The memoryview a seal_* call returns
# is valid until the next seal_* call on the same Sealer.
#
# Allocation per message (docs/performance.md): the IV, two SHA-256 objects and their digests, nothing else.
# One AES block cipher (ECB) made at start-up does CBC here, block by block (a cryptolib CBC object holds its
# IV and cannot be reused); the views into the buffer for a one-block body (every v1 message) are made once.
import hashlib
import os
import struct

import cryptolib
from micropython import const

_VERSION = const(1)
_TYPE_READING = const(1)
_TYPE_ALARM = const(2)
_HEADER = const(10)
_IV = const(16)
_CT = const(26)  # ciphertext offset: header + IV
_TAG = const(16)
_BLOCK = const(16)
_HMAC_BLOCK = const(64)
_KEY = const(32)
_MAX_MESSAGE = const(250)  # the longest 58 + 16*k that is at most 256 bytes
_AES_ECB = const(1)
_ONE_BLOCK = const(42)  # _CT + one block: where the ciphertext of a 15-byte body ends

# "no valid value" codes
_NO_TEMPERATURE = const(-32768)
_NO_HUMIDITY = const(0xFFFF)
_NO_PRESSURE = 0xFFFFFFFF  # not const: above the small-int range on 32-bit ports

_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def _pads(key):
    # HMAC-SHA256 inner and outer padded keys for a key of at most 64 bytes.
    ipad = bytearray(_HMAC_BLOCK)
    opad = bytearray(_HMAC_BLOCK)
    for i in range(_HMAC_BLOCK):
        b = key[i] if i < len(key) else 0
        ipad[i] = b ^ 0x36
        opad[i] = b ^ 0x5C
    return bytes(ipad), bytes(opad)


def _hmac(key, msg):
    ipad, opad = _pads(key)
    inner = hashlib.sha256(ipad)
    inner.update(msg)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


def _check_key(master):
    if len(master) != _KEY:
        raise ValueError("payload key must be 32 bytes, got %d" % len(master))


def derive_keys(master):
    """(enc_key, mac_key) from the 32-byte payload master key."""
    _check_key(master)
    return _hmac(master, b"fieldnode v1 enc\x01"), _hmac(master, b"fieldnode v1 mac\x01")


# The fields' ranges in 0.01 units, widened by half a unit (what still rounds into the field): made once, as
# arithmetic on floats allocates.
_T_RANGE = (-32767.5, 32767.5)
_H_RANGE = (-0.5, 65534.5)
_P_RANGE = (-0.5, 4294967294.5)
_I32_RANGE = (-2147483648.5, 2147483647.5)


def _fixed(value, bounds, name):
    # value in channel units -> nearest 0.01 unit within bounds (exclusive, see above); NaN and infinities fail
    # the test too.
    v = value * 100
    if not bounds[0] < v < bounds[1]:
        raise ValueError("%s %r does not fit its field" % (name, value))
    return round(v)


def _check(value, hi, name):
    if not 0 <= value <= hi:
        raise ValueError("%s %r out of range 0..%d" % (name, value, hi))


class Sealer:
    def __init__(self, master_key, key_id, node_id):
        _check_key(master_key)
        _check(key_id, 0xFFFF, "key id")
        if not 1 <= len(node_id) <= 32:
            raise ValueError("node id must be 1-32 characters, got %d" % len(node_id))
        for c in node_id:
            if c not in _ID_CHARS:
                raise ValueError("node id %r: only A-Z a-z 0-9 _ - allowed" % node_id)
        enc_key, mac_key = derive_keys(master_key)
        self._aes = cryptolib.aes(enc_key, _AES_ECB)
        ipad, self._opad = _pads(mac_key)
        # The inner hash always starts with the padded key and the node id (the associated data).
        self._inner = ipad + bytes((len(node_id),)) + node_id.encode()
        self._key_id = key_id
        self._buf = bytearray(_MAX_MESSAGE)
        mv = self._mv = memoryview(self._buf)
        self._block = mv[_CT:_ONE_BLOCK]  # the ciphertext of a one-block body
        self._signed = mv[:_ONE_BLOCK]  # what the tag covers (after the associated data)
        self._message = mv[:_ONE_BLOCK + _TAG]

    def seal_reading(self, boot, seq, timestamp, time_quality, temperature_c, humidity_rh, pressure_pa,
                     alarm_bits, sensor_status, iv=None):
        """Seal a reading; a channel value of None is sent as its "no valid value" code."""
        t = _NO_TEMPERATURE if temperature_c is None else _fixed(temperature_c, _T_RANGE, "temperature")
        h = _NO_HUMIDITY if humidity_rh is None else _fixed(humidity_rh, _H_RANGE, "humidity")
        p = _NO_PRESSURE if pressure_pa is None else _fixed(pressure_pa, _P_RANGE, "pressure")
        _check(alarm_bits, 0x3F, "alarm bits")
        _check(sensor_status, 0x0F, "sensor status")
        self._check_time(timestamp, time_quality)
        struct.pack_into(">IBhHIBB", self._buf, _CT, timestamp, time_quality, t, h, p, alarm_bits, sensor_status)
        return self._seal(_TYPE_READING, 15, boot, seq, iv)

    def seal_alarm(self, boot, seq, timestamp, time_quality, channel, transition, value, limit, iv=None):
        """Seal an alarm transition; transition bit 0 = raised, bit 1 = high limit; value/limit in channel units."""
        _check(channel, 2, "channel")
        _check(transition, 3, "transition")
        v = _fixed(value, _I32_RANGE, "value")
        lim = _fixed(limit, _I32_RANGE, "limit")
        self._check_time(timestamp, time_quality)
        struct.pack_into(">IBBBii", self._buf, _CT, timestamp, time_quality, channel, transition, v, lim)
        return self._seal(_TYPE_ALARM, 15, boot, seq, iv)

    @staticmethod
    def _check_time(timestamp, time_quality):
        _check(timestamp, 0xFFFFFFFF, "timestamp")
        _check(time_quality, 2, "time quality")

    def _seal(self, type_, body_len, boot, seq, iv):
        # The body is already at _CT; pad it, write the header and IV, encrypt in place, append the tag.
        _check(boot, 0xFFFF, "boot")
        if not 1 <= seq <= 0xFFFFFFFF:
            raise ValueError("seq %r out of range 1..2**32-1" % seq)
        if iv is None:
            iv = os.urandom(_IV)
        elif len(iv) != _IV:
            raise ValueError("iv must be 16 bytes")
        buf = self._buf
        mv = self._mv
        end = _CT + (body_len // _BLOCK + 1) * _BLOCK
        pad = end - _CT - body_len
        for i in range(_CT + body_len, end):
            buf[i] = pad
        struct.pack_into(">BBHHI", buf, 0, _VERSION, type_, self._key_id, boot, seq)
        mv[_HEADER:_CT] = iv
        # CBC: each plaintext block XOR the previous ciphertext block (the IV for the first), then AES.
        aes = self._aes
        for b in range(_CT, end, _BLOCK):
            for i in range(b, b + _BLOCK):
                buf[i] ^= buf[i - _BLOCK]
            block = self._block if b == _CT else mv[b:b + _BLOCK]
            aes.encrypt(block, block)
        inner = hashlib.sha256(self._inner)
        inner.update(self._signed if end == _ONE_BLOCK else mv[:end])
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        tag = outer.digest()
        for i in range(_TAG):
            buf[end + i] = tag[i]
        return self._message if end == _ONE_BLOCK else mv[:end + _TAG]
