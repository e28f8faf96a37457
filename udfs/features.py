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
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from udfs._impl import native_module
from udfs.events import EVENT_TYPES
from udfs.params import DAY_MS, HOUR_MS, RING_DAY, RING_MID, RING_SHORT, ProfileParams
from udfs.profile import DECAY_HALF_LIVES_MS, DECAY_TYPES, N_TYPES, Inactivity, Profile
from udfs.sketches import Preferences, window_counts

NAN = math.nan
TYPE_KEYS = ("view", "cart", "remove", "fav", "purchase", "search")
WINDOWS = ("1h", "24h", "7d", "30d")
HALF_LIFE_KEYS = ("1h", "1d", "7d")
assert len(TYPE_KEYS) == len(EVENT_TYPES) == N_TYPES

# Append only: stored score reasons (udfs.profile, `reasons`) name features by their index here.
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
    "rec_hours_since_last_cart",
    "rec_hours_since_last_fav",
    "rec_repeat_view_share_24h",
    "fun_open_carts",
    "fun_view_to_purchase_smoothed",
    "rfm_buy_day_rate",
    "act_24h_vs_mean",
)

# fun_view_to_purchase_smoothed: purchases per view shrunk towards a prior rate, as if every
# user had also made PRIOR_VIEWS views converting at PRIOR_RATE (a shopper with 3 views and 0
# purchases is not "0 %" but close to the prior)
CONVERSION_PRIOR_RATE = 0.02
CONVERSION_PRIOR_VIEWS = 50.0


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


def round6(x: float) -> float:
    """`round(x, 6)` exactly (CPython rounds the exact decimal value of x, half to even), without
    its decimal conversion in all but the cases that need it: y = x * 1e6 is within |y| * 2**-53
    of the exact value, so unless y is that close to a half, rounding y decides the same integer
    n, and n / 1e6 is the double nearest to n * 10**-6, as round() returns."""
    y = x * 1e6
    if math.isfinite(y) and abs(y) < 2.0**52:
        n = round(y)
        if 0.5 - abs(y - n) > abs(y) * 1e-15:
            return n / 1e6
    return round(x, 6)


def _shares(prefs: Preferences, top: list[int]) -> list[Any]:
    total = prefs.total
    out: list[Any] = []
    for h in top:
        share: object = round6(prefs.slots[h] / total) if total else 0
        out.append([prefs.names.get(h, ""), share])
    return out


def _entropy(prefs: Preferences) -> float:
    total = prefs.total
    if total <= 0:
        return NAN
    shares: list[float] = []
    covered = 0.0
    for v in prefs.slots.values():
        share = v / total
        shares.append(share)
        covered += share
    rest = max(0.0, 1.0 - covered)  # affinity of keys evicted from the bounded slots
    acc = 0.0
    for p in shares:
        if p > 0:
            acc += p * math.log2(p)
    if rest > 0:
        acc += rest * math.log2(rest)
    return -acc


def compute_features(profile: Profile, now_ms: int, params: ProfileParams) -> dict[str, Any]:
    """Every feature as of event time `now_ms` (>= profile.last_ms): the numeric model inputs
    (FEATURE_NAMES) plus the list-valued ones kept for BI (`pref_top_*`, `rec_*`, `hab_hours`)."""
    return features_and_vector(profile, now_ms, params)[0]


def _native_features() -> Callable[..., object] | None:
    """udfs._features.features_and_vector, configured for FEATURE_NAMES, when the native build
    is selected and has it, else None."""
    module = native_module("udfs._features")
    if module is None:
        return None
    # The C code uses these constants as udfs.params defines them today.
    assert DECAY_HALF_LIVES_MS == (HOUR_MS, DAY_MS, 7 * DAY_MS) and HOUR_MS == 3_600_000
    module.configure(FEATURE_NAMES, RING_SHORT, RING_MID, RING_DAY, DAY_MS, HOUR_MS)
    compute: Callable[..., object] = module.features_and_vector
    return compute


def features_and_vector(
    profile: Profile, now_ms: int, params: ProfileParams
) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """`compute_features` and the model input (`feature_vector` of it), computed together."""
    compute = _NATIVE_FEATURES
    if compute is not None:
        out = compute(profile, now_ms, params.top_k, params.activity_half_life_ms)
        if isinstance(out, tuple):
            return out
    return features_and_vector_py(profile, now_ms, params)


def features_and_vector_py(
    profile: Profile, now_ms: int, params: ProfileParams
) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """`features_and_vector` in Python: the reference udfs/_features.c is checked against, and
    the path for what it does not cover."""
    short = window_counts(profile.ring_short, now_ms, RING_SHORT, N_TYPES)
    mid = window_counts(profile.ring_mid, now_ms, RING_MID, N_TYPES)
    week, month, buy_day_rate = _week_and_month(profile.ring_day, now_ms)
    counts = profile.counts
    views = counts[0]
    carts = counts[1]
    purchases = counts[4]

    since_ref = now_ms - profile.ref_ms
    factor_1h = 2.0 ** (-since_ref / DECAY_HALF_LIVES_MS[0])
    factor_1d = 2.0 ** (-since_ref / DECAY_HALF_LIVES_MS[1])
    factor_7d = 2.0 ** (-since_ref / DECAY_HALF_LIVES_MS[2])
    decay = profile.decay
    act_score = profile.decayed(profile.activity, params.activity_half_life_ms, now_ms)

    hour_ms = 3_600_000
    hours_since_last_event = (now_ms - profile.last_ms) / hour_ms
    hours_since_last_purchase = (
        (now_ms - profile.last_purchase_ms) / hour_ms if profile.last_purchase_ms else NAN
    )
    spend_30d_micros = month[N_TYPES]
    spend_30d = spend_30d_micros / 1e6
    spend_life = profile.spend_micros / 1e6
    aov = _ratio(profile.spend_micros / 1e6, profile.priced_purchases)

    view_to_cart = _ratio(carts, views)
    cart_to_purchase = _ratio(purchases, carts)
    abandoned = profile.abandoned_carts
    converted = profile.converted_carts
    abandonment_rate = _ratio(abandoned, abandoned + converted)

    cats = profile.categories
    top = cats.top(params.top_k)
    top_share = _ratio(cats.slots[top[0]], cats.total) if top else NAN
    entropy = _entropy(cats)
    distinct = profile.distinct_categories
    top_categories = _shares(cats, top)
    brands = profile.brands
    top_brands = _shares(brands, brands.top(params.top_k)) if brands.slots else []

    open_events = 0
    open_ms = 0
    for s in profile.sessions:
        open_events += s[2]
        open_ms += s[1] - s[0]
    n_sessions = profile.sessions_closed + len(profile.sessions)
    ses_mean_events = _ratio(profile.sessions_closed_events + open_events, n_sessions)
    ses_mean_minutes = _ratio((profile.sessions_closed_ms + open_ms) / 60_000, n_sessions)
    ses_depth = profile.sessions[-1][2] if profile.sessions else 0

    viewed = _ratio(profile.view_price_sum / 1e6, profile.view_price_n)
    bought = _ratio(profile.buy_price_sum / 1e6, profile.buy_price_n)
    bought_to_viewed = _ratio(bought, viewed) if not math.isnan(viewed) else NAN

    hours = profile.hour_hist
    total_hours = 0.0
    peak = 0
    for i in range(24):
        total_hours += hours[i]
        if hours[i] > hours[peak]:
            peak = i  # ties: the earliest hour
    peak_hour: object = peak if total_hours else NAN
    hab_hours = [v / total_hours for v in hours] if total_hours else [0.0] * 24

    active_days = profile.retired_active_days + len(profile.ring_day)
    ten_days = (now_ms - profile.first_ms) / DAY_MS
    purchases_per_day = _ratio(purchases, active_days)
    events_per_day = _ratio(profile.event_count, active_days)
    carts_per_day = _ratio(carts, active_days)

    last_cart = 0
    for t, _ in profile.recent_carted:
        last_cart = max(last_cart, t)
    hours_since_last_cart = (now_ms - last_cart) / hour_ms if last_cart else NAN
    hours_since_last_fav = _hours_since_newest(profile, 3, now_ms)
    views_24h = mid[0]
    distinct_24h = 0
    for t, _ in profile.recent_viewed:
        if now_ms - t < DAY_MS:
            distinct_24h += 1
    repeat_share = 1.0 - min(distinct_24h, views_24h) / views_24h if views_24h else NAN
    smoothed_conversion = (purchases + CONVERSION_PRIOR_RATE * CONVERSION_PRIOR_VIEWS) / (
        views + CONVERSION_PRIOR_VIEWS
    )
    events_24h = 0
    for i in range(N_TYPES):
        events_24h += mid[i]
    activity_vs_mean = _ratio(events_24h, events_per_day)

    # The order of the keys is the order of the JSON the job writes: keep it.
    features: dict[str, Any] = {
        "cnt_view_1h": short[0],
        "cnt_view_24h": mid[0],
        "cnt_view_7d": week[0],
        "cnt_view_30d": month[0],
        "cnt_view_life": views,
        "cnt_cart_1h": short[1],
        "cnt_cart_24h": mid[1],
        "cnt_cart_7d": week[1],
        "cnt_cart_30d": month[1],
        "cnt_cart_life": carts,
        "cnt_remove_1h": short[2],
        "cnt_remove_24h": mid[2],
        "cnt_remove_7d": week[2],
        "cnt_remove_30d": month[2],
        "cnt_remove_life": counts[2],
        "cnt_fav_1h": short[3],
        "cnt_fav_24h": mid[3],
        "cnt_fav_7d": week[3],
        "cnt_fav_30d": month[3],
        "cnt_fav_life": counts[3],
        "cnt_purchase_1h": short[4],
        "cnt_purchase_24h": mid[4],
        "cnt_purchase_7d": week[4],
        "cnt_purchase_30d": month[4],
        "cnt_purchase_life": purchases,
        "cnt_search_1h": short[5],
        "cnt_search_24h": mid[5],
        "cnt_search_7d": week[5],
        "cnt_search_30d": month[5],
        "cnt_search_life": counts[5],
        "dcy_view_1h": decay[0] * factor_1h,
        "dcy_view_1d": decay[1] * factor_1d,
        "dcy_view_7d": decay[2] * factor_7d,
        "dcy_cart_1h": decay[3] * factor_1h,
        "dcy_cart_1d": decay[4] * factor_1d,
        "dcy_cart_7d": decay[5] * factor_7d,
        "dcy_purchase_1h": decay[6] * factor_1h,
        "dcy_purchase_1d": decay[7] * factor_1d,
        "dcy_purchase_7d": decay[8] * factor_7d,
        "act_score": act_score,
        "rfm_hours_since_last_event": hours_since_last_event,
        "rfm_hours_since_last_purchase": hours_since_last_purchase,
        "rfm_spend_30d": spend_30d,
        "rfm_spend_30d_micros": spend_30d_micros,
        "rfm_spend_life": spend_life,
        "rfm_aov": aov,
        "fun_view_to_cart": view_to_cart,
        "fun_cart_to_purchase": cart_to_purchase,
        "fun_abandoned_carts": abandoned,
        "fun_converted_carts": converted,
        "fun_cart_abandonment_rate": abandonment_rate,
        "pref_top_category_share": top_share,
        "pref_category_entropy": entropy,
        "pref_distinct_categories": distinct,
        "pref_top_categories": top_categories,
        "pref_top_brands": top_brands,
        "ses_count": n_sessions,
        "ses_mean_events": ses_mean_events,
        "ses_mean_minutes": ses_mean_minutes,
        "ses_current_depth": ses_depth,
        "prc_mean_viewed": viewed,
        "prc_mean_bought": bought,
        "prc_bought_to_viewed": bought_to_viewed,
        "hab_peak_hour": peak_hour,
        "hab_hours": hab_hours,
        "ten_days": ten_days,
        "ten_active_days": active_days,
        "rfm_purchases_per_active_day": purchases_per_day,
        "rfm_events_per_active_day": events_per_day,
        "fun_carts_per_active_day": carts_per_day,
        "rec_hours_since_last_cart": hours_since_last_cart,
        "rec_hours_since_last_fav": hours_since_last_fav,
        "rec_repeat_view_share_24h": repeat_share,
        "fun_open_carts": len(profile.pending_carts),
        "fun_view_to_purchase_smoothed": smoothed_conversion,
        "rfm_buy_day_rate": buy_day_rate,
        "act_24h_vs_mean": activity_vs_mean,
        "ten_first_seen_ms": profile.first_ms,
        "rec_viewed_items": [item for _, item in reversed(profile.recent_viewed)],
        "rec_carted_items": [item for _, item in reversed(profile.recent_carted)],
    }
    vector: tuple[Any, ...] = _MODEL_INPUTS(features)
    return features, vector


_MODEL_INPUTS = itemgetter(*FEATURE_NAMES)
# The features in C (udfs/_features.c): the same dict and vector as `features_and_vector_py`;
# NotImplemented for a profile it does not cover.
_NATIVE_FEATURES = _native_features()


def feature_vector(features: dict[str, Any]) -> tuple[float, ...]:
    """The model input: FEATURE_NAMES in order (ints or floats; NaN = missing)."""
    values: tuple[float, ...] = _MODEL_INPUTS(features)
    return values


def _hours_since_newest(profile: Profile, kind: int, now_ms: int) -> float:
    """Hours from the start of the newest ring bucket holding an event of type index `kind` to
    now: 10-minute resolution within the hour, 2 hours within the day, a day within 30 days;
    NaN when there is none in 30 days."""
    for ring, (width, n) in (
        (profile.ring_short, RING_SHORT),
        (profile.ring_mid, RING_MID),
        (profile.ring_day, RING_DAY),
    ):
        head = now_ms // width
        newest = -1
        for bucket, cell in ring.items():
            if 0 <= head - bucket < n and cell[kind] > 0 and bucket > newest:
                newest = bucket
        if newest >= 0:
            return max(0.0, (now_ms - newest * width) / 3_600_000)
    return NAN


def _week_and_month(ring: dict[int, list[int]], now_ms: int) -> tuple[list[int], list[int], float]:
    """Counts (and spend) of the last 7 and 30 days, and the share of the active days of the
    last 30 with a purchase (NaN without active days), in one pass over the daily ring."""
    head = now_ms // RING_DAY[0]
    week = [0, 0, 0, 0, 0, 0, 0]
    month = [0, 0, 0, 0, 0, 0, 0]
    active = 0
    buying = 0
    for bucket, cell in ring.items():
        age = head - bucket
        if 0 <= age < RING_DAY[1]:
            active += 1
            if cell[4] > 0:
                buying += 1
            for i in range(len(cell)):
                v = cell[i]
                month[i] += v
                if age < 7:
                    week[i] += v
    return week, month, buying / active if active else NAN


# ---------------------------------------------------------------------------------------------
# Segments: one per profile, first match in this order. Thresholds are documented in
# docs/features.md; amounts are in the reporting currency.
# ---------------------------------------------------------------------------------------------
HIGH_VALUE_SPEND_30D = 500.0
HIGH_VALUE_SPEND_LIFE = 2000.0
LOYAL_MIN_PURCHASES = 3
LOYAL_MIN_ACTIVE_DAYS = 2
NEW_MAX_DAYS = 7.0


_DORMANT = int(Inactivity.DORMANT)
_AT_RISK = int(Inactivity.AT_RISK)
_ACTIVE = int(Inactivity.ACTIVE)


def segment(profile: Profile, features: dict[str, Any]) -> str:
    # Plain ints: `Inactivity(level)` cost ~1 us per row (the enum's lookup machinery).
    level = int(profile.inactivity)
    if level == _DORMANT:
        return "dormant"
    if level == _AT_RISK:
        return "at_risk"
    if level != _ACTIVE:
        raise ValueError(f"{level} is not a valid Inactivity")  # what Inactivity(level) raises
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
