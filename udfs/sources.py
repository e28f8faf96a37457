"""Event sources shared by the producer, the trainer and the consistency checker: the Taobao
UserBehavior and REES46 CSV formats, and a seeded synthetic shopper generator.

Every reader yields `UserEvent` messages in replay order and reports rows it cannot convert through
`on_error(line_number, message)` instead of stopping.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from schemas.profilestream.events.v1 import user_event_pb2 as pb
from udfs import events as ev

ErrorSink = Callable[[int, str], None]
FORMATS = ("taobao", "rees46", "synthetic", "proto")

_TAOBAO_BEHAVIOR = {
    "pv": ev.VIEW,
    "cart": ev.ADD_TO_CART,
    "fav": ev.FAVORITE,
    "buy": ev.PURCHASE,
}
_REES46_TYPE = {
    "view": ev.VIEW,
    "cart": ev.ADD_TO_CART,
    "remove_from_cart": ev.REMOVE_FROM_CART,
    "purchase": ev.PURCHASE,
}


def _ignore(line: int, message: str) -> None:
    pass


def read_taobao(
    path: Path | str, *, sort_by_time: bool = True, on_error: ErrorSink = _ignore
) -> Iterator[pb.UserEvent]:
    """Taobao UserBehavior.csv: `user_id,item_id,category_id,behavior,timestamp`, no header.

    The file is sorted by user; with `sort_by_time` (the default) rows are replayed in timestamp
    order (stable, so ties keep file order). event_id is `taobao-<line number>`.
    """
    rows: list[tuple[int, int, pb.UserEvent]] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for line_no, rec in enumerate(csv.reader(fh), start=1):
            if len(rec) != 5:
                on_error(line_no, f"expected 5 columns, got {len(rec)}")
                continue
            user, item, category, behavior, ts = rec
            event_type = _TAOBAO_BEHAVIOR.get(behavior)
            if event_type is None:
                on_error(line_no, f"unknown behavior {behavior!r}")
                continue
            try:
                seconds = int(ts)
            except ValueError:
                on_error(line_no, f"timestamp {ts!r} is not an integer")
                continue
            msg = ev.make_message(
                event_id=f"taobao-{line_no}",
                user_id=user,
                event_type=event_type,
                event_time_ms=seconds * 1000,
                item_id=item,
                category_id=category,
            )
            if not sort_by_time:
                yield msg
            else:
                rows.append((seconds, line_no, msg))
    rows.sort(key=lambda r: (r[0], r[1]))
    for _, _, msg in rows:
        yield msg


def read_rees46(path: Path | str, *, on_error: ErrorSink = _ignore) -> Iterator[pb.UserEvent]:
    """REES46 `event_time,event_type,product_id,category_id,category_code,brand,price,user_id,
    user_session` with a header, already in time order. Prices are USD. event_id is
    `rees46-<line number>`."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        expected = [
            "event_time",
            "event_type",
            "product_id",
            "category_id",
            "category_code",
            "brand",
            "price",
            "user_id",
            "user_session",
        ]
        if header != expected:
            on_error(1, f"header {header} is not the REES46 header {expected}")
            return
        for line_no, rec in enumerate(reader, start=2):
            if len(rec) != 9:
                on_error(line_no, f"expected 9 columns, got {len(rec)}")
                continue
            when, kind, product, category, _code, brand, price, user, session = rec
            event_type = _REES46_TYPE.get(kind)
            if event_type is None:
                on_error(line_no, f"unknown event_type {kind!r}")
                continue
            try:
                t = datetime.strptime(when, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
                price_micros = ev.price_to_micros(price) if price else None
            except ValueError as exc:
                on_error(line_no, str(exc))
                continue
            yield ev.make_message(
                event_id=f"rees46-{line_no}",
                user_id=user,
                event_type=event_type,
                event_time_ms=int(t.timestamp()) * 1000,
                item_id=product,
                category_id=category or None,
                brand=brand or None,
                price_micros=price_micros,
                currency="USD" if price_micros is not None else None,
                session_id=session or None,
            )


# ---------------------------------------------------------------------------------------------
# Synthetic shoppers
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticSpec:
    events: int = 20_000
    users: int = 2_000
    seed: int = 42
    start_ms: int = 1_735_689_600_000  # 2025-01-01T00:00:00Z
    days: int = 14
    categories: int = 60

    def __post_init__(self) -> None:
        if self.events <= 0 or self.users <= 0:
            raise ValueError("synthetic: events and users must be positive")
        if self.events < self.users:
            raise ValueError(
                f"synthetic: {self.events} events cannot cover {self.users} users (each user has "
                "at least one event): ask for fewer users or more events"
            )


def synthetic_events(spec: SyntheticSpec) -> list[pb.UserEvent]:
    """A seeded, time-ordered stream of shoppers: sessions, a view -> cart -> purchase funnel,
    category preferences and per-category prices. The same spec always gives the same events.

    Each user has a hidden purchase intent; intent raises cart and purchase rates, so the
    bootstrap model has something real to learn from the profile features.
    """
    rng = random.Random(spec.seed)
    horizon_ms = spec.days * 24 * 3600 * 1000
    base_price = [round(math.exp(rng.gauss(3.3, 0.9)), 2) for _ in range(spec.categories)]
    channels = [pb.CHANNEL_WEB, pb.CHANNEL_MOBILE_WEB, pb.CHANNEL_IOS_APP, pb.CHANNEL_ANDROID_APP]

    # Heavy-tailed share of events per user, scaled to the requested total.
    weights = [rng.paretovariate(1.6) for _ in range(spec.users)]
    scale = spec.events / sum(weights)
    budgets = [max(1, int(w * scale)) for w in weights]
    shortfall = spec.events - sum(budgets)
    i = 0
    while shortfall != 0:  # make the total exact
        j = i % spec.users
        if shortfall > 0:
            budgets[j] += 1
            shortfall -= 1
        elif budgets[j] > 1:
            budgets[j] -= 1
            shortfall += 1
        i += 1

    out: list[tuple[int, int, pb.UserEvent]] = []
    seq = 0
    for u, budget in enumerate(budgets):
        user_id = f"u{u:07d}"
        intent = rng.betavariate(1.2, 6.0)  # hidden purchase intent
        favs = rng.sample(range(spec.categories), k=min(3, spec.categories))
        channel = rng.choice(channels)
        # Sessions of ~7 events at random times within the horizon, in time order.
        depths: list[int] = []
        while sum(depths) < budget:
            depths.append(min(budget - sum(depths), 1 + int(rng.expovariate(1 / 6))))
        starts = sorted(spec.start_ms + rng.randrange(horizon_ms) for _ in depths)
        cart: list[tuple[str, int, int]] = []  # (item, category, price_micros)
        t = starts[0]
        for session, (depth, start) in enumerate(zip(depths, starts, strict=True), start=1):
            session_id = f"{user_id}-s{session}"
            t = max(t, start)
            for _ in range(depth):
                t += rng.randint(5_000, 180_000)
                r = rng.random()
                cat = rng.choice(favs) if rng.random() < 0.8 else rng.randrange(spec.categories)
                item = f"i{cat:03d}{rng.randrange(400):03d}"
                price = round(base_price[cat] * rng.uniform(0.7, 1.4) * 100) * 10_000
                kw: dict[str, object] = {}
                if cart and r < 0.05 + 0.5 * intent:
                    item, cat, price = cart.pop(rng.randrange(len(cart)))
                    kind = ev.PURCHASE
                    kw = {
                        "price_micros": price,
                        "currency": "USD",
                        "quantity": 1 + int(rng.random() < 0.15),
                    }
                elif r < 0.08 + 0.35 * intent:
                    kind = ev.ADD_TO_CART
                    cart.append((item, cat, price))
                    kw = {"price_micros": price, "currency": "USD"}
                elif cart and r < 0.12 + 0.35 * intent:
                    item, cat, price = cart.pop()
                    kind = ev.REMOVE_FROM_CART
                elif r < 0.16 + 0.35 * intent:
                    kind = ev.FAVORITE
                elif r < 0.22 + 0.35 * intent:
                    kind = ev.SEARCH
                    kw = {"search_query": f"category {cat} deals"}
                else:
                    kind = ev.VIEW
                    kw = {"price_micros": price, "currency": "USD"}
                seq += 1
                msg = ev.make_message(
                    event_id=f"syn-{spec.seed}-{seq}",
                    user_id=user_id,
                    event_type=kind,
                    event_time_ms=t,
                    item_id=None if kind == ev.SEARCH else item,
                    category_id=f"c{cat:03d}",
                    session_id=session_id,
                    channel=channel,
                    **kw,  # type: ignore[arg-type]
                )
                out.append((t, seq, msg))
    out.sort(key=lambda r: (r[0], r[1]))
    return [msg for _, _, msg in out]


def read_events(
    fmt: str,
    path: Path | str | None = None,
    *,
    spec: SyntheticSpec | None = None,
    on_error: ErrorSink = _ignore,
) -> Iterator[pb.UserEvent]:
    """One entry point for every source format."""
    if fmt == "synthetic":
        yield from synthetic_events(spec or SyntheticSpec())
        return
    if path is None:
        raise ValueError(f"format {fmt!r} needs a file path")
    if not Path(path).is_file():
        raise FileNotFoundError(f"dataset {path} does not exist")
    if fmt == "taobao":
        yield from read_taobao(path, on_error=on_error)
    elif fmt == "rees46":
        yield from read_rees46(path, on_error=on_error)
    else:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------------
# Files of encoded messages ("proto" format): each message prefixed by its length as a varint,
# the standard length-delimited Protobuf stream (Java's writeDelimitedTo, protobuf-net's
# SerializeWithLengthPrefix). Messages are kept byte for byte, valid or not.
# ---------------------------------------------------------------------------------------------
def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def write_delimited(path: Path | str, messages: Iterable[bytes]) -> int:
    count = 0
    with open(path, "wb") as fh:
        for raw in messages:
            fh.write(encode_varint(len(raw)))
            fh.write(raw)
            count += 1
    return count


def read_delimited(path: Path | str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        data = fh.read()
    pos, n = 0, len(data)
    while pos < n:
        size, shift = 0, 0
        while True:
            if pos >= n or shift > 63:
                raise ValueError(f"{path}: truncated length prefix at byte {pos}")
            byte = data[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if pos + size > n:
            raise ValueError(f"{path}: message at byte {pos} runs past the end of the file")
        yield data[pos : pos + size]
        pos += size


def message_bytes(
    fmt: str,
    path: Path | str | None = None,
    *,
    spec: SyntheticSpec | None = None,
    on_error: ErrorSink = _ignore,
) -> Iterator[bytes]:
    """The messages of a log as the job receives them: encoded `UserEvent`s, or for "proto" the
    file's messages exactly as stored (invalid ones included)."""
    if fmt == "proto":
        if path is None:
            raise ValueError("format 'proto' needs a file path")
        if not Path(path).is_file():
            raise FileNotFoundError(f"dataset {path} does not exist")
        yield from read_delimited(path)
        return
    for msg in read_events(fmt, path, spec=spec, on_error=on_error):
        yield msg.SerializeToString()
