"""The status topic's text (docs/protocol.md, "Status") as the node writes it and the host reads it."""
from fieldnode.protocol import parse_status


def test_plain_states():
    assert parse_status("online") == {"online": True, "sensor": 0, "dropped": 0, "lost": 0}
    assert parse_status("offline") == {"online": False, "sensor": 0, "dropped": 0, "lost": 0}


def test_fields():
    assert parse_status("online sensor=4 dropped=12 lost=1") == {"online": True, "sensor": 4, "dropped": 12,
                                                                "lost": 1}
    assert parse_status("online dropped=3")["dropped"] == 3
    assert parse_status("online queued=7 sensor=1") == {"online": True, "sensor": 1, "dropped": 0, "lost": 0}


def test_not_a_status():
    for text in ("", "up", "online sensor", "online sensor=x", "online sensor=-1", "online  sensor=1",
                 "online sensor=\u0664"):
        assert parse_status(text) is None, text
