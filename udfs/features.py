"""Profile features: pure functions of (profile, now). docs/features.md is the table of record.

Names follow `<family>_<measure>[_<event>][_<window>]`; families: `cnt` (counts), `dcy` (decayed
counts), `rfm`, `fun` (funnel), `pref` (preferences), `rec` (recent items), `ses` (sessions),
`prc` (prices), `hab` (habits), `ten` (tenure), `act` (activity).

`FEATURE_NAMES` is the model's contract: the numeric features, in order. A model's metadata.json
must list exactly these names (checked at load time). Undefined values (a ratio with a zero
denominator, a time since a purchase that never happened) are NaN, which LightGBM treats as
missing.
"""

from __future__ import annotations

import math
from operator import itemgetter
from typing import Any

from udfs.events import EVENT_TYPES
from udfs.profile import (
    DAY_MS,
    DECAY_HALF_LIVES_MS,
    DECAY_TYPES,
    N_TYPES,
    RING_DAY,
    RING_MID,
    RING_SHORT,
    Inactivity,
    Preferences,
    Profile,
    ProfileParams,
    window_counts,
)

NAN = math.nan
TYPE_KEYS = ("view", "cart", "remove", "fav", "purchase", "search")
WINDOWS = ("1h", "24h", "7d", "30d")
HALF_LIFE_KEYS = ("1h", "1d", "7d")
assert len(TYPE_KEYS) == len(EVENT_TYPES) == N_TYPES

FEATURE_NAMES: tuple[str, ...] = (
    *(f"cnt_{k}_{w}" for k in TYPE_KEYS for w in (*WINDOWS, "life")),
    *(f"dcy_{TYPE_KEYS[t - 1]}_{h}" for t in DECAY_TYPES for h in HALF_LIFE_KEYS),
    "act_score",
    "rfm_hours_since_last_event",
    "rfm_hours_since_last_purchase",
    "rfm_spend_30d",
    "rfm_spend_life",
    "rfm_aov",
    "rfm_purchases_per_active_day",
    "rfm_events_per_active_day",
    "fun_view_to_cart",
    "fun_cart_to_purchase",
    "fun_abandoned_carts",
    "fun_converted_carts",
    "fun_cart_abandonment_rate",
    "fun_carts_per_active_day",
    "pref_top_category_share",
    "pref_category_entropy",
    "pref_distinct_categories",
    "ses_count",
    "ses_mean_events",
    "ses_mean_minutes",
    "ses_current_depth",
    "prc_mean_viewed",
    "prc_mean_bought",
    "prc_bought_to_viewed",
    "hab_peak_hour",
    "ten_days",
    "ten_active_days",
)

_CNT_KEYS = tuple(tuple(f"cnt_{k}_{w}" for w in (*WINDOWS, "life")) for k in TYPE_KEYS)
_DCY_KEYS = tuple(f"dcy_{TYPE_KEYS[t - 1]}_{h}" for t in DECAY_TYPES for h in HALF_LIFE_KEYS)

SEGMENTS = (
    "new",
    "active_browser",
    "cart_abandoner",
    "loyal_buyer",
    "high_value",
    "at_risk",
    "dormant",
)


def _ratio(num: float, den: float) -> float:
    return num / den if den else NAN


def _shares(prefs: Preferences, top: list[int]) -> list[Any]:
    total = prefs.total
    return [[prefs.names.get(h, ""), round(prefs.slots[h] / total, 6) if total else 0] for h in top]


def _entropy(prefs: Preferences) -> float:
    if prefs.total <= 0:
        return NAN
    shares = [v / prefs.total for v in prefs.slots.values()]
    rest = max(0.0, 1.0 - sum(shares))  # affinity of keys evicted from the bounded slots
    return -sum(p * math.log2(p) for p in (*shares, rest) if p > 0)


def compute_features(profile: Profile, now_ms: int, params: ProfileParams) -> dict[str, Any]:
    """Every feature as of event time `now_ms` (>= profile.last_ms): the numeric model inputs
    (FEATURE_NAMES) plus the list-valued ones kept for BI (`pref_top_*`, `rec_*`, `hab_hours`)."""
    f: dict[str, Any] = {}
    short = window_counts(profile.ring_short, now_ms, RING_SHORT, N_TYPES)
    mid = window_counts(profile.ring_mid, now_ms, RING_MID, N_TYPES)
    week, month = _week_and_month(profile.ring_day, now_ms)
    for i, (k1h, k24h, k7d, k30d, klife) in enumerate(_CNT_KEYS):
        f[k1h] = short[i]
        f[k24h] = mid[i]
        f[k7d] = week[i]
        f[k30d] = month[i]
        f[klife] = profile.counts[i]
    factors = [2.0 ** (-(now_ms - profile.ref_ms) / h) for h in DECAY_HALF_LIVES_MS]
    for key, value, j in zip(_DCY_KEYS, profile.decay, (0, 1, 2) * 3, strict=True):
        f[key] = value * factors[j]
    f["act_score"] = profile.decayed(profile.activity, params.activity_half_life_ms, now_ms)

    hour_ms = 3_600_000
    views, carts, _, _, purchases, _ = profile.counts
    f["rfm_hours_since_last_event"] = (now_ms - profile.last_ms) / hour_ms
    f["rfm_hours_since_last_purchase"] = (
        (now_ms - profile.last_purchase_ms) / hour_ms if profile.last_purchase_ms else NAN
    )
    f["rfm_spend_30d"] = month[N_TYPES] / 1e6
    f["rfm_spend_30d_micros"] = month[N_TYPES]
    f["rfm_spend_life"] = profile.spend_micros / 1e6
    f["rfm_aov"] = _ratio(profile.spend_micros / 1e6, profile.priced_purchases)

    f["fun_view_to_cart"] = _ratio(carts, views)
    f["fun_cart_to_purchase"] = _ratio(purchases, carts)
    f["fun_abandoned_carts"] = profile.abandoned_carts
    f["fun_converted_carts"] = profile.converted_carts
    f["fun_cart_abandonment_rate"] = _ratio(
        profile.abandoned_carts, profile.abandoned_carts + profile.converted_carts
    )

    cats = profile.categories
    top = cats.top(params.top_k)
    f["pref_top_category_share"] = _ratio(cats.slots[top[0]], cats.total) if top else NAN
    f["pref_category_entropy"] = _entropy(cats)
    f["pref_distinct_categories"] = profile.distinct_categories
    f["pref_top_categories"] = _shares(cats, top)
    brands = profile.brands
    f["pref_top_brands"] = _shares(brands, brands.top(params.top_k)) if brands.slots else []

    open_events = sum(s[2] for s in profile.sessions)
    open_ms = sum(s[1] - s[0] for s in profile.sessions)
    n_sessions = profile.sessions_closed + len(profile.sessions)
    f["ses_count"] = n_sessions
    f["ses_mean_events"] = _ratio(profile.sessions_closed_events + open_events, n_sessions)
    f["ses_mean_minutes"] = _ratio((profile.sessions_closed_ms + open_ms) / 60_000, n_sessions)
    f["ses_current_depth"] = profile.sessions[-1][2] if profile.sessions else 0

    viewed = _ratio(profile.view_price_sum / 1e6, profile.view_price_n)
    bought = _ratio(profile.buy_price_sum / 1e6, profile.buy_price_n)
    f["prc_mean_viewed"] = viewed
    f["prc_mean_bought"] = bought
    f["prc_bought_to_viewed"] = _ratio(bought, viewed) if not math.isnan(viewed) else NAN

    hours = profile.hour_hist
    total_hours = sum(hours)
    f["hab_peak_hour"] = hours.index(max(hours)) if total_hours else NAN  # ties: earliest
    f["hab_hours"] = [v / total_hours for v in hours] if total_hours else [0.0] * 24

    active_days = profile.retired_active_days + len(profile.ring_day)
    f["ten_days"] = (now_ms - profile.first_ms) / DAY_MS
    f["ten_active_days"] = active_days
    # Intensity, comparable across tenures (lifetime totals grow with tenure).
    f["rfm_purchases_per_active_day"] = _ratio(purchases, active_days)
    f["rfm_events_per_active_day"] = _ratio(profile.event_count, active_days)
    f["fun_carts_per_active_day"] = _ratio(carts, active_days)
    f["ten_first_seen_ms"] = profile.first_ms
    f["rec_viewed_items"] = [item for _, item in reversed(profile.recent_viewed)]
    f["rec_carted_items"] = [item for _, item in reversed(profile.recent_carted)]
    return f


_MODEL_INPUTS = itemgetter(*FEATURE_NAMES)


def feature_vector(features: dict[str, Any]) -> tuple[float, ...]:
    """The model input: FEATURE_NAMES in order (ints or floats; NaN = missing)."""
    values: tuple[float, ...] = _MODEL_INPUTS(features)
    return values


def _week_and_month(ring: dict[int, list[int]], now_ms: int) -> tuple[list[int], list[int]]:
    head = now_ms // RING_DAY[0]
    week = [0] * (N_TYPES + 1)
    month = [0] * (N_TYPES + 1)
    for bucket, cell in ring.items():
        age = head - bucket
        if 0 <= age < RING_DAY[1]:
            for i, v in enumerate(cell):
                month[i] += v
                if age < 7:
                    week[i] += v
    return week, month


# ---------------------------------------------------------------------------------------------
# Segments: one per profile, first match in this order. Thresholds are documented in
# docs/features.md; amounts are in the reporting currency.
# ---------------------------------------------------------------------------------------------
HIGH_VALUE_SPEND_30D = 500.0
HIGH_VALUE_SPEND_LIFE = 2000.0
LOYAL_MIN_PURCHASES = 3
LOYAL_MIN_ACTIVE_DAYS = 2
NEW_MAX_DAYS = 7.0


def segment(profile: Profile, features: dict[str, Any]) -> str:
    level = Inactivity(profile.inactivity)
    if level == Inactivity.DORMANT:
        return "dormant"
    if level == Inactivity.AT_RISK:
        return "at_risk"
    if (
        features["rfm_spend_30d"] >= HIGH_VALUE_SPEND_30D
        or features["rfm_spend_life"] >= HIGH_VALUE_SPEND_LIFE
    ):
        return "high_value"
    if (
        features["cnt_purchase_life"] >= LOYAL_MIN_PURCHASES
        and features["ten_active_days"] >= LOYAL_MIN_ACTIVE_DAYS
    ):
        return "loyal_buyer"
    if features["fun_abandoned_carts"] > 0 and features["cnt_purchase_7d"] == 0:
        return "cart_abandoner"
    if features["ten_days"] < NEW_MAX_DAYS:
        return "new"
    return "active_browser"
