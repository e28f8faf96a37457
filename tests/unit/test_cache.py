"""The write-through profile cache (udfs/cache.py): bounded, least recently written dropped first,
and every put O(1) however many users pass through it."""

from __future__ import annotations

import pytest

from udfs.cache import ProfileCache
from udfs.profile import Profile


def _profile(n: int) -> Profile:
    return Profile(epoch_ms=1_000 + n)


def test_a_full_cache_drops_the_least_recently_written_profile() -> None:
    cache = ProfileCache(3)
    a, b, c, d = (_profile(i) for i in range(4))
    cache.put("a", a)
    cache.put("b", b)
    cache.put("c", c)
    cache.put("a", a)  # written again: now the most recent
    cache.put("d", d)  # full: drops b, the least recently written
    assert len(cache) == 3
    assert cache.get("b") is None
    assert cache.get("a") is a and cache.get("c") is c and cache.get("d") is d
    assert (cache.hits, cache.misses) == (3, 1)


def test_reading_does_not_reorder() -> None:
    """Only writes count: a profile read but not written since is still dropped first."""
    cache = ProfileCache(2)
    cache.put("a", _profile(0))
    cache.put("b", _profile(1))
    assert cache.get("a") is not None
    cache.put("c", _profile(2))
    assert cache.get("a") is None and cache.get("b") is not None


def test_drop_and_a_zero_capacity_cache() -> None:
    cache = ProfileCache(2)
    cache.put("a", _profile(0))
    cache.drop("a")
    cache.drop("never-held")
    assert cache.get("a") is None and len(cache) == 0
    off = ProfileCache(0)
    off.put("a", _profile(0))
    assert len(off) == 0 and off.get("a") is None
    with pytest.raises(ValueError, match="capacity"):
        ProfileCache(-1)


def test_many_more_users_than_capacity_keep_the_newest() -> None:
    """A million-user run through a small cache: always exactly the `capacity` newest writes (the
    eviction that was quadratic in a plain dict ran here too; the bench measures the cost)."""
    cache = ProfileCache(1_000)
    profile = _profile(0)
    for i in range(50_000):
        cache.put(f"u{i}", profile)
    assert len(cache) == 1_000
    assert cache.get("u48999") is None
    assert all(cache.get(f"u{i}") is profile for i in range(49_000, 50_000))
