"""Same features, same rows: the profile step reproduces, row for row, what the code produced when
the golden corpus was frozen (tests/support/golden.py), and continues identically from state
written then (JVM-free). Both ways the job can hold a profile are checked: decoded from its stored
bytes at every step, and kept decoded in the write-through cache."""

from __future__ import annotations

import base64
import json

import pytest

from tests.support.golden import CUT, GOLDEN, corpus, digests, engine, only, replay, restored
from udfs.cache import ProfileCache
from udfs.host import MemoryHost


@pytest.mark.parametrize("cache", [None, 100_000, 50], ids=["state", "cache", "small-cache"])
def test_every_row_and_dead_letter_matches_the_frozen_digests(cache: int | None) -> None:
    golden = json.loads(GOLDEN.read_text())
    raws = corpus()
    assert len(raws) == golden["messages"], "the corpus generator changed"
    host = MemoryHost(engine(), ProfileCache(cache) if cache is not None else None)
    got = digests(replay(raws, host))
    assert got.keys() == golden["users"].keys()
    differ = sorted(u for u in got if got[u] != golden["users"][u])
    assert not differ, f"{len(differ)} users' rows changed, e.g. {differ[:5]}"
    if host.cache is not None:
        assert host.cache.hits > 0 and len(host.cache) <= host.cache.capacity
        # The cache held exactly what the state holds.
        for user, profile in host.cache._items.items():
            assert host.engine.load(host.states[user]) == profile, user


@pytest.mark.parametrize("cache", [None, 100_000], ids=["state", "cache"])
def test_state_written_by_the_frozen_code_is_read_and_continued_identically(
    cache: int | None,
) -> None:
    restore = json.loads(GOLDEN.read_text())["restore"]
    states = {u: base64.b64decode(b) for u, b in restore["states"].items()}
    assert {b[0] for b in states.values()} == {restore["format"]}
    host = restored(states, restore["timers"], ProfileCache(cache) if cache else None)
    rest = only(set(states), corpus()[CUT:])
    got = digests(replay(rest, host, restore["max_event_ms"]))
    assert got == restore["after"]
