"""Feature naming, the model contract and segments (JVM-free)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from udfs import events as ev
from udfs.events import Event
from udfs.features import FEATURE_NAMES, SEGMENTS, compute_features, feature_vector, segment
from udfs.fold import fold
from udfs.params import DAY_MS, ProfileParams
from udfs.profile import Inactivity, Profile

P = ProfileParams()
T0 = 1_735_689_600_000
DOCS = Path(__file__).resolve().parents[2] / "docs" / "features.md"


def make(kind: int, t: int, price: int | None = None, item: str = "i") -> Event:
    return Event(
        f"e{t}{kind}{item}",
        "u",
        kind,
        t,
        item,
        "c",
        None,
        price,
        "USD" if price is not None else None,
        1,
        None,
        None,
        0,
    )


def profile_of(events: list[Event]) -> Profile:
    p: Profile | None = None
    for e in events:
        p, _ = fold(p, e, P)
    assert p is not None
    return p


def seg(p: Profile) -> str:
    return segment(p, compute_features(p, p.last_ms, P))


def test_feature_names_follow_the_scheme_and_are_unique() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    families = {"cnt", "dcy", "act", "rfm", "fun", "pref", "ses", "prc", "hab", "ten", "rec"}
    for name in FEATURE_NAMES:
        assert re.fullmatch(r"[a-z]+(_[a-z0-9]+)+", name) and name.split("_")[0] in families


def test_every_feature_is_documented() -> None:
    doc = DOCS.read_text()
    p = profile_of([make(ev.VIEW, T0)])
    for name in compute_features(p, T0, P):
        documented = re.sub(r"^cnt_[a-z]+_", "cnt_<event>_", name)  # one row per window
        assert f"`{documented}`" in doc, f"{name} is not in docs/features.md"


def test_vector_has_the_model_order_and_nan_for_undefined() -> None:
    vec = feature_vector(compute_features(profile_of([make(ev.VIEW, T0)]), T0, P))
    assert len(vec) == len(FEATURE_NAMES)
    named = dict(zip(FEATURE_NAMES, vec, strict=True))
    assert named["cnt_view_life"] == 1.0
    assert math.isnan(named["rfm_hours_since_last_purchase"])
    assert math.isnan(named["fun_cart_to_purchase"])


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([make(ev.VIEW, T0)], "new"),
        ([make(ev.VIEW, T0), make(ev.VIEW, T0 + 10 * DAY_MS)], "active_browser"),
        ([make(ev.ADD_TO_CART, T0), make(ev.VIEW, T0 + 2 * DAY_MS)], "cart_abandoner"),
        (
            [make(ev.PURCHASE, T0 + d * DAY_MS, 10_000_000, f"i{d}") for d in range(3)],
            "loyal_buyer",
        ),
        ([make(ev.PURCHASE, T0, 600_000_000)], "high_value"),
    ],
)
def test_segments(events: list[Event], expected: str) -> None:
    assert seg(profile_of(events)) == expected


def test_inactivity_segments_come_first() -> None:
    p = profile_of([make(ev.PURCHASE, T0, 600_000_000)])
    p.inactivity = Inactivity.AT_RISK
    assert seg(p) == "at_risk"
    p.inactivity = Inactivity.DORMANT
    assert seg(p) == "dormant"
    p.inactivity = 2  # the stored level is a plain int
    assert seg(p) == "dormant"
    p.inactivity = 3  # a level no rule knows is an error, as the enum's own lookup raises
    with pytest.raises(ValueError, match=r"^3 is not a valid Inactivity$"):
        seg(p)
    assert set(SEGMENTS) == {
        "new",
        "active_browser",
        "cart_abandoner",
        "loyal_buyer",
        "high_value",
        "at_risk",
        "dormant",
    }
