"""Same features, same rows: the profile step reproduces, row for row, what the code produced when
the golden corpus was frozen (tests/golden.py), and continues identically from state written then
(JVM-free)."""

from __future__ import annotations

import base64
import json

from tests.golden import CUT, GOLDEN, corpus, digests, engine, only, replay


def test_every_row_and_dead_letter_matches_the_frozen_digests() -> None:
    golden = json.loads(GOLDEN.read_text())
    raws = corpus()
    assert len(raws) == golden["messages"], "the corpus generator changed"
    got = digests(replay(raws, engine()))
    assert got.keys() == golden["users"].keys()
    differ = sorted(u for u in got if got[u] != golden["users"][u])
    assert not differ, f"{len(differ)} users' rows changed, e.g. {differ[:5]}"


def test_state_written_by_the_frozen_code_is_read_and_continued_identically() -> None:
    restore = json.loads(GOLDEN.read_text())["restore"]
    states = {u: base64.b64decode(b) for u, b in restore["states"].items()}
    assert {b[0] for b in states.values()} == {restore["format"]}
    timers = {u: set(t) for u, t in restore["timers"].items()}
    rest = only(set(states), corpus()[CUT:])
    got = digests(replay(rest, engine(), states, timers, restore["max_event_ms"]))
    assert got == restore["after"]
