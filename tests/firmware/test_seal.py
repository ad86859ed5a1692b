# node.seal against the shared vectors (tests/vectors/seal_v1.json, made by tools/make_vectors.py).
# The real run is on the Unix port (test_on_unix_port.py); CPython has no cryptolib, so there each test
# returns at once.
import json

try:
    import cryptolib
except ImportError:
    cryptolib = None

if cryptolib:
    from node import seal

_HERE = __file__.rpartition("/")[0] or "."
_vectors = None


def _load():
    global _vectors
    if _vectors is None:
        with open(_HERE + "/../vectors/seal_v1.json") as f:
            _vectors = json.load(f)
    return _vectors


def _seal(v, iv):
    i = v["input"]
    s = seal.Sealer(bytes.fromhex(v["master"]), v["key_id"], v["node_id"])
    if v["type"] == "reading":
        return s.seal_reading(v["boot"], v["seq"], i["timestamp"], i["time_quality"], i["temperature_c"],
                              i["humidity_rh"], i["pressure_pa"], i["alarm_bits"], i["sensor_status"], iv=iv)
    return s.seal_alarm(v["boot"], v["seq"], i["timestamp"], i["time_quality"], i["channel"], i["transition"],
                        i["value"], i["limit"], iv=iv)


def _raises(fn, *args):
    try:
        fn(*args)
    except ValueError:
        return
    raise AssertionError("no ValueError for %r" % (args,))


def test_derive_keys_matches_vectors():
    if not cryptolib:
        return
    keys = _load()["keys"]
    assert keys
    for k in keys:
        enc, mac = seal.derive_keys(bytes.fromhex(k["master"]))
        assert enc.hex() == k["enc_key"]
        assert mac.hex() == k["mac_key"]


def test_seal_gives_vector_bytes():
    if not cryptolib:
        return
    kinds = set()
    for v in _load()["sealed"]:
        out = _seal(v, bytes.fromhex(v["iv"]))
        assert isinstance(out, memoryview)
        assert len(out) == 58, v["name"]
        assert bytes(out).hex() == v["message"], v["name"]
        kinds.add(v["type"])
    assert kinds == {"reading", "alarm"}


def test_one_sealer_reuses_its_buffer():
    if not cryptolib:
        return
    vs = [v for v in _load()["sealed"] if v["name"].startswith("reading-basic") or v["name"] == "reading-seq-2"]
    assert len(vs) == 2
    s = seal.Sealer(bytes.fromhex(vs[0]["master"]), 1, "node-01")
    views = []
    for v in vs:
        i = v["input"]
        views.append(s.seal_reading(v["boot"], v["seq"], i["timestamp"], i["time_quality"], i["temperature_c"],
                                    i["humidity_rh"], i["pressure_pa"], i["alarm_bits"], i["sensor_status"],
                                    iv=bytes.fromhex(v["iv"])))
        assert bytes(views[-1]).hex() == v["message"]
    assert bytes(views[0]) == bytes(views[1])  # the first view now shows the second message


def test_fresh_iv_without_iv_argument():
    if not cryptolib:
        return
    s = seal.Sealer(bytes(32), 1, "node-01")
    a = bytes(s.seal_reading(1, 1, 0, 1, 20.0, 50.0, 100000.0, 0, 0))
    b = bytes(s.seal_reading(1, 1, 0, 1, 20.0, 50.0, 100000.0, 0, 0))
    assert len(a) == len(b) == 58
    assert a[10:26] != b[10:26]
    assert a != b


def test_invalid_key_and_node_id():
    if not cryptolib:
        return
    for key in (bytes(31), bytes(33), b""):
        _raises(seal.Sealer, key, 1, "node-01")
    for node_id in ("", "x" * 33, "no space", "a/b", "n\xf6de"):
        _raises(seal.Sealer, bytes(32), 1, node_id)
    for key_id in (-1, 65536):
        _raises(seal.Sealer, bytes(32), key_id, "node-01")
    seal.Sealer(bytes(32), 65535, "x" * 32)
    _raises(seal.derive_keys, bytes(16))


def test_values_that_do_not_fit_raise():
    if not cryptolib:
        return
    s = seal.Sealer(bytes(32), 1, "node-01")
    ok = [1, 1, 0, 1, 20.0, 50.0, 100000.0, 0, 0]
    for index, bad in ((4, 327.68), (4, -327.68), (4, float("nan")), (5, -0.01), (5, 655.35),
                       (6, 42949672.95), (7, 0x40), (8, 0x10), (3, 3), (2, -1), (0, 65536), (1, 0), (1, 2**32)):
        args = list(ok)
        args[index] = bad
        _raises(s.seal_reading, *args)
    _raises(s.seal_reading, *ok, bytes(15))  # short IV
    _raises(s.seal_alarm, 1, 1, 0, 1, 3, 1, 1.0, 1.0)  # channel
    _raises(s.seal_alarm, 1, 1, 0, 1, 0, 4, 1.0, 1.0)  # transition
    _raises(s.seal_alarm, 1, 1, 0, 1, 0, 1, 21474836.48, 1.0)
