"""Digests of what the code makes of the corpora, to compare two builds of it (the compiled
modules and the pure-Python fallback, run in a child interpreter): every state the engine stores
over the golden corpus, and every decoder verdict on the hostile and golden corpora."""

from __future__ import annotations

import hashlib

from tests.support import hostile
from tests.support.golden import NOW_MS, corpus, engine, replay
from udfs.events import InvalidEvent, decode_event
from udfs.host import MemoryHost


def verdicts() -> str:
    """A digest of what the decoder says about the hostile corpus and the golden corpus."""
    h = hashlib.sha256()
    raws = [raw for raw, _ in hostile.malformed(3000, users=["u1", "u2"], t0=NOW_MS - 10**9,
                                                now_ms=NOW_MS)] + corpus()  # fmt: skip
    for raw in raws:
        try:
            h.update(repr(decode_event(raw, NOW_MS)).encode())
        except InvalidEvent as exc:
            h.update(repr((exc.reason, exc.detail, exc.user_id, exc.event_time_ms)).encode())
    return h.hexdigest()


def states_digest() -> str:
    """A digest of every state the engine stores over the golden corpus."""
    host = MemoryHost(engine())
    h = hashlib.sha256()
    for _ in replay(corpus(), host):
        pass
    for user in sorted(host.states):
        h.update(user.encode() + host.states[user])
    return h.hexdigest()
