"""The per-client token bucket that limits POST /feedback."""

from __future__ import annotations

from src.serving.rate_limit import ClientRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_steady_rate_per_client() -> None:
    clock = Clock()
    limiter = ClientRateLimiter(rate_per_minute=6, burst=2, max_clients=10, clock=clock)
    assert [limiter.acquire("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.acquire("a") == 10.0  # one token every 10 s
    assert limiter.acquire("b") == 0.0  # another client has its own bucket
    clock.now += 10
    assert limiter.acquire("a") == 0.0 and limiter.acquire("a") > 0
    clock.now += 3600
    assert [limiter.acquire("a") for _ in range(3)][:2] == [0.0, 0.0]  # never above the burst


def test_memory_is_bounded_by_forgetting_the_least_recent_client() -> None:
    clock = Clock()
    limiter = ClientRateLimiter(rate_per_minute=1, burst=1, max_clients=3, clock=clock)
    for name in ("a", "b", "c", "d"):
        assert limiter.acquire(name) == 0.0
    assert len(limiter._buckets) == 3 and "a" not in limiter._buckets
    assert limiter.acquire("d") > 0  # still remembered
