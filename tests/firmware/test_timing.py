# node.timing.Backoff: doubling with jitter, capped by retry_max and by half the time already waited.
# Plain asserts: runs under pytest (CPython) and on the Unix port (mpyunit.py).
from node.timing import Backoff


def run(b, now, failures):
    """Fail at every moment the backoff allows; [(time of the attempt, wait chosen)]."""
    out = []
    for _ in range(failures):
        assert b.due(now)
        b.failed(now)
        assert not b.due(now + b.wait_ms - 1) and b.due(now + b.wait_ms)
        out.append((now, b.wait_ms))
        now += b.wait_ms
    return out


def test_due_at_once_until_a_failure():
    b = Backoff(1000, 60000)
    assert b.due(0) and b.due(-5)


def test_waits_double_with_jitter_up_to_the_maximum():
    for _ in range(20):
        b = Backoff(1000, 60000)
        attempts = run(b, 0, 40)
        delay = 1000
        for t, wait in attempts:
            cap = min(delay, max(1000, t // 2))
            assert cap // 2 <= wait <= cap, (t, wait, cap)
            delay = min(delay * 2, 60000)
        assert attempts[-1][1] >= 30000  # it does grow to the maximum


def test_coming_back_costs_at_most_half_the_outage():
    for _ in range(50):
        b = Backoff(1000, 60000)
        for t, wait in run(b, 0, 12):
            assert wait <= max(1000, t // 2)


def test_jitter_spreads_a_fleet():
    waits = set()
    for _ in range(20):
        b = Backoff(1000, 60000)
        run(b, 0, 5)
        waits.add(b.wait_ms)
    assert len(waits) > 5


def test_reset_starts_again():
    b = Backoff(1000, 60000)
    run(b, 0, 8)
    b.reset()
    assert b.due(0) and b.failures == 0
    b.failed(100000)
    assert 500 <= b.wait_ms <= 1000
