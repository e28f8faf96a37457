"""Model features derived from a profile. The order of FEATURE_NAMES is the model's contract:
a model's metadata.json must list exactly these names in this order (checked at load time)."""

from __future__ import annotations

from udfs.profile import HOUR_MS, Profile

FEATURE_NAMES: tuple[str, ...] = (
    "views",
    "carts",
    "removes",
    "favorites",
    "purchases",
    "searches",
    "spend",
    "activity",
    "distinct_categories",
    "tenure_hours",
    "cart_per_view",
    "purchase_per_cart",
)


def feature_vector(profile: Profile) -> list[float]:
    """The model input for `profile`, in FEATURE_NAMES order, as of its last event."""
    views, carts, removes, favorites, purchases, searches = profile.counts
    return [
        float(views),
        float(carts),
        float(removes),
        float(favorites),
        float(purchases),
        float(searches),
        profile.spend_micros / 1_000_000,
        profile.activity,
        float(len(profile.category_hashes)),
        (profile.last_event_ms - profile.first_event_ms) / HOUR_MS,
        carts / (views + 1.0),
        purchases / (carts + 1.0),
    ]
