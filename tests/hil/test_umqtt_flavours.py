"""node/link.py works with both umqtt.simple flavours a board may carry: the PyPI 1.3.4 release (the rest of
the HIL suite) and the one frozen into current ESP32 firmware, whose API takes an SSLContext. The second is
stood in for by tests/hil/umqtt_context_flavour.py, copied into place as umqtt/simple.py."""
import os
import shutil
from pathlib import Path

from fieldnode import paths
from fieldnode.bench.collector import Collector
from fieldnode.bench.rig import Rig

HERE = Path(__file__).resolve().parent


def test_node_publishes_verified_readings_through_the_context_flavour(tmp_path):
    lib = tmp_path / "lib"
    (lib / "umqtt").mkdir(parents=True)
    shutil.copy(HERE / "umqtt_context_flavour.py", lib / "umqtt" / "simple.py")
    seen = Collector()
    with Rig(tmp_path / "rig", ["node-ctx"], interval_s=0.3, autostart=[]) as rig:
        node = rig.add_node("node-ctx", start=False)
        # the stand-in replaces build/mpylib: the 1.3.4 module is not on this node's path at all
        node.micropypath = os.pathsep.join([".frozen", str(paths.FIRMWARE), str(paths.UNIX_COMPAT), str(lib)])
        with rig.monitor(**seen.callbacks()):
            node.start()
            node.wait_for_line(r"umqtt\(context flavour\) imported")
            got = seen.wait_for(lambda c: (lambda r: r if len(r) >= 3 else None)(c.of("node-ctx", "reading")),
                                what="3 verified readings from node-ctx")
    assert [m.seq for m in got[:3]] == sorted(m.seq for m in got[:3])
    assert not seen.rejected
