"""The fieldnode wire format, version 1, on the host: seal and open readings and alarms.

Mirrors docs/protocol.md (the contract) and firmware/node/seal.py; both are checked against
tests/vectors/seal_v1.json. Values travel as fixed point in 0.01 of the channel's unit.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import FieldnodeError

VERSION = 1
TYPE_READING = 1
TYPE_ALARM = 2
TYPE_NAMES = {TYPE_READING: "reading", TYPE_ALARM: "alarm"}

KEY_SIZE = 32
HEADER_SIZE = 10
IV_SIZE = 16
BLOCK_SIZE = 16
TAG_SIZE = 16
BODY_SIZE = 15  # both body types
MIN_MESSAGE_SIZE = HEADER_SIZE + IV_SIZE + BLOCK_SIZE + TAG_SIZE  # 58, also the size of every reading
MAX_MESSAGE_SIZE = 256  # limit from the spec; the longest valid length is 250

CHANNELS = ("temperature_c", "humidity_rh", "pressure_pa")
TIME_QUALITIES = ("not_synced", "ntp", "host")
SENSOR_FLAGS = ("read_error", "wrong_chip_id", "stuck_value", "implausible_value")
REASONS = ("malformed", "bad-version", "unknown-key-id", "bad-tag", "bad-padding", "bad-body")

NO_TEMPERATURE = -0x8000
NO_HUMIDITY = 0xFFFF
NO_PRESSURE = 0xFFFFFFFF

_HEADER = struct.Struct(">BBHHI")
_READING = struct.Struct(">IBhHIBB")
_ALARM = struct.Struct(">IBBBii")
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_ALARM_BITS = (1 << 2 * len(CHANNELS)) - 1
_STATUS_BITS = (1 << len(SENSOR_FLAGS)) - 1


class ProtocolError(FieldnodeError):
    """A message the host must reject; `reason` is one of REASONS, in the order the spec checks them."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_node_id(node_id: str) -> None:
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
        raise ValueError(f"node id {node_id!r}: 1-32 characters of A-Z a-z 0-9 _ -")


def derive_keys(master: bytes) -> tuple[bytes, bytes]:
    """(enc_key, mac_key) from a 32-byte payload master key."""
    if len(master) != KEY_SIZE:
        raise ValueError(f"payload key must be {KEY_SIZE} bytes, got {len(master)}")
    enc = hmac.digest(master, b"fieldnode v1 enc\x01", hashlib.sha256)
    mac = hmac.digest(master, b"fieldnode v1 mac\x01", hashlib.sha256)
    return enc, mac


def _to_fixed(value: float, lo: int, hi: int, name: str) -> int:
    v = value * 100
    if not lo - 0.5 < v < hi + 0.5:  # NaN fails too
        raise ValueError(f"{name} {value!r} does not fit its field")
    return round(v)


def _check_range(value: int, hi: int, name: str, lo: int = 0) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{name} {value!r} out of range {lo}..{hi}")


def _bad_body(detail: str) -> ProtocolError:
    return ProtocolError("bad-body", detail)


def _time_fields(timestamp: int, time_quality: int) -> dict:
    # An unsynced node counts seconds since boot: no calendar time to show.
    time = None
    if time_quality != 0:
        time = datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"timestamp": timestamp, "time": time, "time_quality": TIME_QUALITIES[time_quality]}


def _check_time(timestamp: int, time_quality: int, error) -> None:
    if not 0 <= timestamp <= 0xFFFFFFFF:
        raise error(f"timestamp {timestamp} out of range")
    if not 0 <= time_quality < len(TIME_QUALITIES):
        raise error(f"undefined time quality {time_quality}")


@dataclass(frozen=True)
class Reading:
    timestamp: int
    time_quality: int
    temperature_c: float | None
    humidity_rh: float | None
    pressure_pa: float | None
    alarm_bits: int = 0
    sensor_status: int = 0

    TYPE = TYPE_READING

    def encode(self) -> bytes:
        _check_time(self.timestamp, self.time_quality, ValueError)
        _check_range(self.alarm_bits, _ALARM_BITS, "alarm bits")
        _check_range(self.sensor_status, _STATUS_BITS, "sensor status")
        t = NO_TEMPERATURE if self.temperature_c is None else _to_fixed(self.temperature_c, -0x7FFF, 0x7FFF,
                                                                        "temperature")
        h = NO_HUMIDITY if self.humidity_rh is None else _to_fixed(self.humidity_rh, 0, NO_HUMIDITY - 1, "humidity")
        p = NO_PRESSURE if self.pressure_pa is None else _to_fixed(self.pressure_pa, 0, NO_PRESSURE - 1, "pressure")
        return _READING.pack(self.timestamp, self.time_quality, t, h, p, self.alarm_bits, self.sensor_status)

    @classmethod
    def decode(cls, body: bytes) -> Reading:
        if len(body) != _READING.size:
            raise _bad_body(f"reading body is {len(body)} bytes, expected {_READING.size}")
        ts, tq, t, h, p, alarm_bits, status = _READING.unpack(body)
        _check_time(ts, tq, _bad_body)
        if alarm_bits & ~_ALARM_BITS:
            raise _bad_body(f"undefined alarm bits 0x{alarm_bits:02x}")
        if status & ~_STATUS_BITS:
            raise _bad_body(f"undefined sensor status bits 0x{status:02x}")
        return cls(ts, tq,
                   None if t == NO_TEMPERATURE else t / 100,
                   None if h == NO_HUMIDITY else h / 100,
                   None if p == NO_PRESSURE else p / 100,
                   alarm_bits, status)

    def as_dict(self) -> dict:
        return {
            **_time_fields(self.timestamp, self.time_quality),
            "temperature_c": self.temperature_c,
            "humidity_rh": self.humidity_rh,
            "pressure_pa": self.pressure_pa,
            "alarms": [f"{CHANNELS[bit // 2]}.{'high' if bit % 2 else 'low'}"
                       for bit in range(2 * len(CHANNELS)) if self.alarm_bits >> bit & 1],
            "sensor_status": [name for bit, name in enumerate(SENSOR_FLAGS) if self.sensor_status >> bit & 1],
        }


@dataclass(frozen=True)
class Alarm:
    timestamp: int
    time_quality: int
    channel: int
    raised: bool
    high: bool
    value: float
    limit: float

    TYPE = TYPE_ALARM

    def encode(self) -> bytes:
        _check_time(self.timestamp, self.time_quality, ValueError)
        _check_range(self.channel, len(CHANNELS) - 1, "channel")
        v = _to_fixed(self.value, -0x80000000, 0x7FFFFFFF, "value")
        lim = _to_fixed(self.limit, -0x80000000, 0x7FFFFFFF, "limit")
        transition = int(bool(self.raised)) | int(bool(self.high)) << 1
        return _ALARM.pack(self.timestamp, self.time_quality, self.channel, transition, v, lim)

    @classmethod
    def decode(cls, body: bytes) -> Alarm:
        if len(body) != _ALARM.size:
            raise _bad_body(f"alarm body is {len(body)} bytes, expected {_ALARM.size}")
        ts, tq, channel, transition, v, lim = _ALARM.unpack(body)
        _check_time(ts, tq, _bad_body)
        if channel >= len(CHANNELS):
            raise _bad_body(f"undefined channel {channel}")
        if transition & ~3:
            raise _bad_body(f"undefined transition bits 0x{transition:02x}")
        return cls(ts, tq, channel, bool(transition & 1), bool(transition & 2), v / 100, lim / 100)

    def as_dict(self) -> dict:
        channel = CHANNELS[self.channel]
        return {
            **_time_fields(self.timestamp, self.time_quality),
            "channel": channel,
            "alarm": f"{channel}.{'high' if self.high else 'low'}",
            "raised": self.raised,
            "high": self.high,
            "value": self.value,
            "limit": self.limit,
        }


Body = Reading | Alarm
_BODY_TYPES = {TYPE_READING: Reading, TYPE_ALARM: Alarm}


@dataclass(frozen=True)
class Opened:
    node_id: str
    key_id: int
    boot: int
    seq: int
    type: int
    body: Body

    def as_dict(self) -> dict:
        """JSON-ready fields: who, which key, which message, then the body's decoded values."""
        return {"node": self.node_id, "key_id": self.key_id, "boot": self.boot, "seq": self.seq,
                "type": TYPE_NAMES[self.type], **self.body.as_dict()}


def _tag(mac_key: bytes, node_id: str, signed: bytes) -> bytes:
    aad = bytes([len(node_id)]) + node_id.encode("ascii")
    return hmac.digest(mac_key, aad + signed, hashlib.sha256)[:TAG_SIZE]


def seal_raw(master: bytes, node_id: str, key_id: int, boot: int, seq: int, type_: int, plaintext: bytes,
             iv: bytes | None = None, version: int = VERSION) -> bytes:
    """Encrypt-then-MAC an already padded plaintext under any header: for test vectors of rejected messages."""
    enc_key, mac_key = derive_keys(master)
    iv = os.urandom(IV_SIZE) if iv is None else bytes(iv)
    if len(iv) != IV_SIZE or len(plaintext) % BLOCK_SIZE:
        raise ValueError("iv must be 16 bytes and the plaintext whole blocks")
    encryptor = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
    signed = _HEADER.pack(version, type_, key_id, boot, seq) + iv + encryptor.update(plaintext) + encryptor.finalize()
    return signed + _tag(mac_key, node_id, signed)


def pad(body: bytes) -> bytes:
    """PKCS#7 padding to whole AES blocks (1..16 bytes added)."""
    n = BLOCK_SIZE - len(body) % BLOCK_SIZE
    return body + bytes([n]) * n


def seal(master: bytes, node_id: str, key_id: int, boot: int, seq: int, body_obj: Body,
         iv: bytes | None = None) -> bytes:
    """The sealed message for a Reading or an Alarm, exactly as the node would send it."""
    check_node_id(node_id)
    _check_range(key_id, 0xFFFF, "key id")
    _check_range(boot, 0xFFFF, "boot")
    _check_range(seq, 0xFFFFFFFF, "seq", lo=1)
    return seal_raw(master, node_id, key_id, boot, seq, body_obj.TYPE, pad(body_obj.encode()), iv)


def _check_length(message: bytes) -> None:
    n = len(message)
    if n < MIN_MESSAGE_SIZE or n > MAX_MESSAGE_SIZE or (n - MIN_MESSAGE_SIZE) % BLOCK_SIZE:
        raise ProtocolError("malformed", f"{n} bytes; a message is 58 + 16*k bytes, at most 256")


def parse_header(message: bytes) -> tuple[int, int, int, int, int]:
    """(version, type, key_id, boot, seq) of a message whose length is valid; nothing is authenticated yet."""
    _check_length(message)
    return _HEADER.unpack_from(message)


class _Openers(threading.local):
    """Per thread (cipher contexts are not thread-safe), per (master key, node id): what opening a message
    needs that does not change from one message to the next -- the derived keys, an HMAC already fed the
    associated data, and an AES block decryptor (CBC is done here: a CBC context is bound to one IV).
    Made once instead of for every message: this roughly halves the host's cost of opening one."""

    LIMIT = 4096  # keys x nodes kept; past that the cache starts again

    def __init__(self):
        self.cache = {}

    def get(self, master: bytes, node_id: str):
        entry = self.cache.get((master, node_id))
        if entry is None:
            if len(self.cache) >= self.LIMIT:
                self.cache.clear()
            enc_key, mac_key = derive_keys(master)
            mac = hmac.new(mac_key, bytes([len(node_id)]) + node_id.encode("ascii"), hashlib.sha256)
            entry = self.cache[(master, node_id)] = (mac, Cipher(algorithms.AES(enc_key), modes.ECB()).decryptor())
        return entry


_openers = _Openers()


def open_message(message: bytes, node_id: str, keys: Mapping[int, bytes]) -> Opened:
    """Verify and decrypt a message from node_id; keys maps key id -> payload master key."""
    check_node_id(node_id)
    message = bytes(message)
    version, type_, key_id, boot, seq = parse_header(message)
    if version != VERSION:
        raise ProtocolError("bad-version", f"version {version}, expected {VERSION}")
    master = keys.get(key_id)
    if master is None:
        raise ProtocolError("unknown-key-id", f"no payload key with id {key_id} for node {node_id}")
    mac, blocks = _openers.get(bytes(master), node_id)
    signed, tag = message[:-TAG_SIZE], message[-TAG_SIZE:]
    mac = mac.copy()
    mac.update(signed)
    if not hmac.compare_digest(mac.digest()[:TAG_SIZE], tag):
        raise ProtocolError("bad-tag", f"message does not verify for node {node_id} with key id {key_id}")
    chained = signed[HEADER_SIZE:-BLOCK_SIZE]  # the IV, then every ciphertext block but the last
    ciphertext = signed[HEADER_SIZE + IV_SIZE:]
    size = len(ciphertext)
    plain = (int.from_bytes(blocks.update(ciphertext), "big") ^ int.from_bytes(chained, "big")).to_bytes(size, "big")
    n = plain[-1]
    if not 1 <= n <= BLOCK_SIZE or plain[-n:] != bytes([n]) * n:
        raise ProtocolError("bad-padding", "invalid PKCS#7 padding")
    body_type = _BODY_TYPES.get(type_)
    if body_type is None:
        raise _bad_body(f"unknown message type {type_}")
    return Opened(node_id, key_id, boot, seq, type_, body_type.decode(plain[:-n]))


# -- status topic (docs/protocol.md, "Status") -------------------------------------------------------------

STATUS_FIELDS = ("sensor", "dropped", "lost")


def parse_status(text: str) -> dict | None:
    """The status topic's text as {"online": bool, "sensor": int, "dropped": int, "lost": int} (absent
    fields are 0; fields this version does not know are ignored), or None if it is not a status."""
    words = text.split(" ")
    if words[0] not in ("online", "offline"):
        return None
    out = {"online": words[0] == "online", **{f: 0 for f in STATUS_FIELDS}}
    for word in words[1:]:
        name, eq, value = word.partition("=")
        if not (eq and value.isdigit() and value.isascii()):
            return None
        if name in STATUS_FIELDS:
            out[name] = int(value)
    return out
