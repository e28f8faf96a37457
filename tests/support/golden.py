"""The golden corpus: a deterministic event log that exercises every path of the profile step, and
a driver that replays it the way the job does (events in order, event-time timers fired as the
watermark passes them, the bounded-input end rule), recording every row and dead letter.

`tests/data/golden_rows.json` holds, per user, a digest of the rows the profile code produces for
this corpus. Frozen at issue 9 (before the per-event cost work: a faster implementation must
reproduce them exactly) and rewritten once since, on purpose, by issue 10 (new features and the
`score_reasons` column) and issue 13 (the `cluster_id` and `cluster_version` columns, assigned by
the fixed `SEGMENTATION` below). The mid-stream states in it stay those written by the code of
issue 9's start (format 2).

    python -m tests.support.golden     # rewrite the digests (only when rows are meant to change)
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from schemas.profilestream.events.v1 import user_event_pb2 as pb
from udfs import events as ev
from udfs.cache import ProfileCache
from udfs.clusters import ClusterFeature, ClusterInfo, Segmentation
from udfs.engine import ProfileEngine, Step, StepOutcome
from udfs.events import InvalidEvent, decode_event, make_message
from udfs.host import MemoryHost
from udfs.params import ProfileParams
from udfs.pseudonym import Pseudonymiser
from udfs.sources import SyntheticSpec, synthetic_events

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden_rows.json"
NOW_MS = 1_900_000_000_000  # the wall clock the corpus is decoded with (after every event)
MAX_OUT_OF_ORDERNESS_MS = 5_000
BRANDS = ("acme", "globex", "initech", "umbrella", "hooli", "Ωmega 日本語", "x" * 80)


def corpus(seed: int = 11) -> list[bytes]:
    """~25,000 messages: dense and sparse synthetic shoppers (sparse ones go silent long enough
    for at-risk, dormant and expiry), with brands, other currencies, duplicates, out-of-order
    and late events, many categories (the HyperLogLog path), long ids and erasures."""
    rng = random.Random(seed)
    dense = synthetic_events(SyntheticSpec(events=18_000, users=900, seed=seed, days=20))
    sparse = synthetic_events(
        SyntheticSpec(events=6_000, users=600, seed=seed + 1, days=240, categories=90)
    )
    for m in sparse:
        m.user_id = "s" + m.user_id
    msgs = sorted(
        [*dense, *sparse], key=lambda m: (m.event_time.seconds, m.event_time.nanos, m.event_id)
    )
    out: list[pb.UserEvent] = []
    erased: set[str] = set()
    for i, m in enumerate(msgs):
        r = rng.random()
        if r < 0.12:
            m.brand = rng.choice(BRANDS)
        elif r < 0.15 and m.HasField("price_micros"):
            m.currency = "EUR"
        elif r < 0.16 and m.HasField("item_id"):
            m.item_id = m.item_id + "-" + "long" * 20  # cut to 64 characters in lists
        elif r < 0.19 and m.HasField("category_id"):
            m.category_id = f"rare{rng.randrange(40)}"  # > 16 distinct: HyperLogLog
        out.append(m)
        if rng.random() < 0.02:  # a producer retry: the same event again, a little later
            dup = pb.UserEvent()
            dup.CopyFrom(m)
            out.append(dup)
        if rng.random() < 0.01:  # late: older than the user's newest event by > 10 minutes
            late = pb.UserEvent()
            late.CopyFrom(m)
            late.event_id = f"late-{i}"
            late.event_time.seconds -= rng.choice((11, 30, 600)) * 60
            out.append(late)
        if i % 2500 == 1000 and m.user_id not in erased:
            erased.add(m.user_id)
            out.append(
                make_message(
                    event_id=f"erase-{i}",
                    user_id=m.user_id,
                    event_type=ev.ERASE,
                    event_time_ms=m.event_time.seconds * 1000,
                )
            )
    # Out of order within the allowed lateness: swap some neighbours of the same user.
    for j in range(len(out) - 1):
        a, b = out[j], out[j + 1]
        gap = b.event_time.seconds - a.event_time.seconds
        if a.user_id == b.user_id and 0 < gap < 300 and rng.random() < 0.3:
            out[j], out[j + 1] = b, a
    return [m.SerializeToString() for m in out]


# The segmentation the corpus is clustered with: fixed here, like the scorer, so the digests do not
# depend on a trained segmentation (models/segments/). Every transform, a NaN fill (no purchase
# yet) and clipping at both ends are on the path.
SEGMENTATION = Segmentation(
    "golden-s1",
    [
        ClusterFeature("views", "cnt_view_30d", "log1p", 0.0, 0.0, 5.0, 1.6, 0.8),
        ClusterFeature("carts", "cnt_cart_30d", "log1p", 0.0, 0.0, 3.0, 0.5, 0.5),
        ClusterFeature("purchases", "cnt_purchase_30d", "log1p", 0.0, 0.0, 2.5, 0.2, 0.4),
        ClusterFeature("spend", "rfm_spend_30d", "log1p", 0.0, 0.0, 7.0, 1.0, 1.7),
        ClusterFeature(
            "since_buy", "rfm_hours_since_last_purchase", "log1p", 5e3, 1.0, 8.0, 6.0, 1.5
        ),
        ClusterFeature("abandon", "fun_cart_abandonment_rate", "identity", 0.0, 0.0, 1.0, 0.3, 0.4),
        ClusterFeature("peak_sin", "hab_peak_hour", "sin24", 12.0, -0.9, 0.9, 0.0, 0.7),
        ClusterFeature("peak_cos", "hab_peak_hour", "cos24", 12.0, -0.9, 0.9, 0.0, 0.7),
    ],
    [
        [-0.8, -0.8, -0.4, -0.5, 0.6, -0.5, 0.0, 0.0],
        [0.6, 1.0, -0.4, -0.5, 0.6, 1.0, 0.5, -0.5],
        [0.8, 0.6, 1.5, 1.5, -1.2, -0.3, -0.5, 0.5],
        [1.5, 0.2, 0.2, 0.3, 0.0, 0.0, 0.8, 0.8],
    ],
    [ClusterInfo(i, f"golden {i}", "") for i in range(4)],
)


def engine(score: Callable[[Sequence[float]], float] | None = None) -> ProfileEngine:
    """The engine with a deterministic scorer (a checksum of the model input) and `SEGMENTATION`,
    so the digests do not depend on a model file."""

    def checksum(features: Sequence[float]) -> float:
        values = [0.0 if math.isnan(x) else float(x) for x in features]
        return sum(v * (i + 1) for i, v in enumerate(values)) % 1.0

    return ProfileEngine(
        ProfileParams(),
        score or checksum,
        "golden",
        Pseudonymiser(b"g" * 32),
        segmentation=SEGMENTATION,
    )


def replay(
    raws: list[bytes],
    host: MemoryHost,
    max_event: int = 0,
) -> Iterator[tuple[str, str, tuple[object, ...]]]:
    """Yield (user, kind, row) for every row and dead letter the job would emit, in order, with
    `host` holding the state and timers (empty, or restored)."""
    watermark = max_event - MAX_OUT_OF_ORDERNESS_MS - 1 if max_event else -(2**63)

    def emit(user: str, s: Step) -> Iterator[tuple[str, str, tuple[object, ...]]]:
        if s.erase:
            yield user, "delete", ()
        if s.dead_letter is not None:
            yield user, "dead_letter", s.dead_letter
        if s.row is not None:
            yield user, "row", s.row

    for raw in raws:
        try:
            event = decode_event(raw, NOW_MS)
        except InvalidEvent:
            continue
        max_event = max(max_event, event.event_time_ms)
        yield from emit(event.user_id, host.on_event(event, "golden", NOW_MS))
        new_watermark = max_event - MAX_OUT_OF_ORDERNESS_MS - 1
        if new_watermark > watermark:
            watermark = new_watermark
            for user, step in host.fire(watermark):
                yield from emit(user, step)
    # The end of a bounded input: timers up to the watermark the data implies.
    for user, step in host.fire(max_event - MAX_OUT_OF_ORDERNESS_MS - 1):
        yield from emit(user, step)


def digests(rows: Iterator[tuple[str, str, tuple[object, ...]]]) -> dict[str, str]:
    """user -> SHA-256 over the repr of every row and dead letter of that user, in order."""
    acc: dict[str, hashlib._Hash] = {}
    for user, kind, row in rows:
        # The features JSON is compared as text (it crosses into Java as UTF-8 bytes).
        text = tuple(v.decode() if isinstance(v, bytes) and kind == "row" else v for v in row)
        acc.setdefault(user, hashlib.sha256()).update(f"{kind}:{text!r}\n".encode())
    return {user: h.hexdigest()[:16] for user, h in sorted(acc.items())}


def restored_users(raws: list[bytes]) -> list[str]:
    """The users whose state the restore fixture keeps: every tenth user of the first half."""
    users = sorted({decode_event(r, NOW_MS).user_id for r in raws[:CUT] if _valid(r)})
    return users[::10]


def _valid(raw: bytes) -> bool:
    try:
        decode_event(raw, NOW_MS)
    except InvalidEvent:
        return False
    return True


def only(users: set[str], raws: list[bytes]) -> list[bytes]:
    return [r for r in raws if _valid(r) and decode_event(r, NOW_MS).user_id in users]


CUT = 12_000  # the restore fixture's state is taken after this many messages


def restored(
    states: dict[str, bytes], timers: dict[str, list[int]], cache: ProfileCache | None = None
) -> MemoryHost:
    """A host holding `states` and their registered timers, as after a restore."""
    host = MemoryHost(engine(), cache)
    for user, state in states.items():
        host.states[user] = state
    for user, times in timers.items():
        for t in times:
            host.apply(user, Step(StepOutcome.STALE_TIMER, timer_register=t))
    return host


def main() -> None:
    raws = corpus()
    got = digests(replay(raws, MemoryHost(engine())))
    # State written half-way through for a sample of users, and what the rest of their events
    # produce from it: a later format must read it and continue identically. The states are
    # frozen: once in the file (format 2, written by the code before issue 9's work) they are
    # kept, and only what the current code makes of them is recomputed.
    frozen = json.loads(GOLDEN.read_text())["restore"] if GOLDEN.exists() else None
    if frozen is not None:
        kept = {u: base64.b64decode(b) for u, b in frozen["states"].items()}
        kept_timers = {u: list(t) for u, t in frozen["timers"].items()}
        max_event = int(frozen["max_event_ms"])
    else:
        host = MemoryHost(engine())
        for _ in replay(raws[:CUT], host):
            pass
        users = restored_users(raws)
        max_event = max(decode_event(r, NOW_MS).event_time_ms for r in raws[:CUT] if _valid(r))
        kept = {u: host.states[u] for u in users if u in host.states}
        kept_timers = {u: [host.timers[u]] if u in host.timers else [] for u in kept}
    after = digests(replay(only(set(kept), raws[CUT:]), restored(kept, kept_timers), max_event))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(
        json.dumps(
            {
                "messages": len(raws),
                "users": got,
                "restore": {
                    "format": kept[next(iter(kept))][0],
                    "max_event_ms": max_event,
                    "states": {u: base64.b64encode(b).decode() for u, b in kept.items()},
                    "timers": kept_timers,
                    "after": after,
                },
            },
            indent=0,
        )
        + "\n"
    )
    print(f"{len(raws)} messages, {len(got)} users, {len(kept)} restored -> {GOLDEN}")


if __name__ == "__main__":
    main()
