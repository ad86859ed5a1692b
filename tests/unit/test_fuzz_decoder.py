"""The host decoder under hypothesis: whatever arrives, `open_message` returns an Opened or raises
ProtocolError (never another exception), and a changed message never opens. The same for the topic judge
(monitor.classify) and the ingest store, which must log anything a client can send, never crash on it.

Three kinds of input: arbitrary bytes (most die at the length check), bytes of a valid length under a
header naming a key the node has (they reach the tag check), and messages sealed with the node's own key
around arbitrary plaintext and headers (they pass the tag: this is what fuzzes the padding and body
decoding). Then mutations of valid messages. About 10 s in all.
"""
import hashlib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fieldnode import monitor, protocol
from fieldnode.ingest import IngestStore
from fieldnode.protocol import Alarm, Opened, ProtocolError, Reading

KEY = hashlib.sha256(b"fuzz key").digest()
NODE = "node-1"
KEYS = {NODE: {7: KEY}}

node_ids = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=32)
valid_lengths = st.integers(0, 12).map(lambda k: protocol.MIN_MESSAGE_SIZE + 16 * k)

readings = st.builds(Reading, st.integers(0, 2**32 - 1), st.integers(0, 2),
                     st.none() | st.floats(-327.67, 327.67), st.none() | st.floats(0, 655.34),
                     st.none() | st.floats(0, 4.2e7), st.integers(0, 63), st.integers(0, 15))
alarms = st.builds(Alarm, st.integers(0, 2**32 - 1), st.integers(0, 2), st.integers(0, 2), st.booleans(),
                   st.booleans(), st.floats(-2e7, 2e7), st.floats(-2e7, 2e7))


def open_or_reject(message, node=NODE, keys=None):
    """open_message's result, or the ProtocolError's reason; any other exception fails the test."""
    try:
        opened = protocol.open_message(message, node, KEYS[NODE] if keys is None else keys)
    except ProtocolError as exc:
        assert exc.reason in protocol.REASONS
        assert str(exc).startswith(exc.reason + ": ") and "\n" not in str(exc)
        return exc.reason
    assert isinstance(opened, Opened) and opened.node_id == node
    assert opened.body.encode() is not None   # what opened is a well-formed body
    return opened


@settings(max_examples=1500, deadline=None)
@given(message=st.binary(max_size=300), node=node_ids,
       keys=st.dictionaries(st.integers(0, 65535), st.just(KEY), max_size=3))
def test_arbitrary_bytes_are_rejected_with_a_reason(message, node, keys):
    assert open_or_reject(message, node, keys) in protocol.REASONS


@settings(max_examples=1500, deadline=None)
@given(data=st.data(), length=valid_lengths, version=st.sampled_from([1, 1, 1, 0, 2, 255]))
def test_valid_length_and_known_key_id_reach_the_tag_and_fail_it(data, length, version):
    body = data.draw(st.binary(min_size=length - 3, max_size=length - 3))
    message = bytes([version, body[0]]) + (7).to_bytes(2, "big") + body[1:]
    assert len(message) == length
    assert open_or_reject(message) == ("bad-tag" if version == 1 else "bad-version")


@settings(max_examples=1500, deadline=None)
@given(type_=st.sampled_from([1, 2]) | st.integers(0, 255), boot=st.integers(0, 65535),
       seq=st.integers(0, 2**32 - 1),
       blocks=st.integers(1, 13).flatmap(lambda n: st.binary(min_size=16 * n, max_size=16 * n)),
       padded_body=st.binary(max_size=40) | (readings | alarms).map(lambda b: b.encode()), use_pad=st.booleans())
def test_authentic_messages_with_any_plaintext_open_or_give_a_body_reason(type_, boot, seq, blocks, padded_body,
                                                                        use_pad):
    # Sealed with the node's key: the tag verifies, so padding and body decoding are what is tested.
    plain = protocol.pad(padded_body) if use_pad else blocks
    assume(len(plain) <= 13 * 16)
    message = protocol.seal_raw(KEY, NODE, 7, boot, seq, type_, plain)
    got = open_or_reject(message)
    if isinstance(got, Opened):
        assert (got.type, got.boot, got.seq, got.key_id) == (type_, boot, seq, 7)
        assert protocol.pad(got.body.encode()) == plain  # what opens is exactly what was sealed
    else:
        assert got in ("bad-padding", "bad-body")


@settings(max_examples=400, deadline=None)
@given(body=readings | alarms, boot=st.integers(0, 65535), seq=st.integers(1, 2**32 - 1),
       iv=st.binary(min_size=16, max_size=16))
def test_a_valid_message_opens_to_its_values(body, boot, seq, iv):
    message = protocol.seal(KEY, NODE, 7, boot, seq, body, iv=iv)
    got = open_or_reject(message)
    assert isinstance(got, Opened) and got.body.encode() == body.encode()


def _mutate(message, data):
    ops = data.draw(st.lists(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend", "swap"]),
                             min_size=1, max_size=4))
    m = bytearray(message)
    for op in ops:
        i = data.draw(st.integers(0, max(len(m) - 1, 0)))
        if op == "flip" and m:
            m[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and m:
            m[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            m[i:i] = data.draw(st.binary(min_size=1, max_size=32))
        elif op == "delete" and m:
            del m[i:i + data.draw(st.integers(1, 32))]
        elif op == "truncate":
            del m[i:]
        elif op == "extend":
            m += data.draw(st.binary(min_size=1, max_size=48))
        elif op == "swap" and len(m) > 1:
            j = data.draw(st.integers(0, len(m) - 1))
            m[i], m[j] = m[j], m[i]
    return bytes(m)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), body=readings | alarms, seq=st.integers(1, 2**32 - 1))
def test_a_mutated_message_never_opens_unless_it_is_byte_identical(data, body, seq):
    original = protocol.seal(KEY, NODE, 7, 3, seq, body)
    mutated = _mutate(original, data)
    got = open_or_reject(mutated)
    if mutated == original:
        assert isinstance(got, Opened) and got.seq == seq
    else:
        assert got in protocol.REASONS, "a changed message opened: %s" % mutated.hex()


@settings(max_examples=1000, deadline=None)
@given(topic=st.text(max_size=80) | st.builds(lambda n, k: "fieldnode/%s/%s" % (n, k),
                                               node_ids | st.text(max_size=40),
                                               st.sampled_from(["reading", "alarm", "status", "cmd/x", "other"])),
       payload=st.binary(max_size=300))
def test_classify_judges_anything_without_raising(topic, payload):
    what, node, value = monitor.classify(topic, payload, KEYS)
    assert what in (monitor.MESSAGE, monitor.REJECT, monitor.STATUS, monitor.IGNORE)
    if what == monitor.REJECT:
        assert value in monitor.REASONS
    if what == monitor.MESSAGE:   # random bytes never pass the tag
        raise AssertionError("accepted %r on %r" % (payload, topic))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = IngestStore(tmp_path_factory.mktemp("fuzz") / "ingest.sqlite", keys=KEYS)
    yield s
    s.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), body=readings | alarms, seq=st.integers(1, 2**32 - 1))
def test_ingest_stores_nothing_but_identical_copies_of_valid_messages(store, data, body, seq):
    original = protocol.seal(KEY, NODE, 7, 1, seq, body)
    kind = "reading" if body.TYPE == protocol.TYPE_READING else "alarm"
    mutated = _mutate(original, data)
    before = store.stats()
    outcome = store.add(NODE, "fieldnode/%s/%s" % (NODE, kind), mutated)
    after = store.stats()
    if mutated == original:
        assert outcome in ("stored", "duplicate", "conflict")
    else:
        assert outcome == "rejected"
        assert after["stored"] == before["stored"] and after["rejected"] == before["rejected"] + 1
