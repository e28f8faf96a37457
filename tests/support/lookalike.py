"""A profile's look-alike: a plain object with the same attributes and values (its preferences
too), not an instance of the class. The C readers (udfs/_features.c, udfs/_statecodec.c) take
each class's attribute getters once and call them directly (udfs/_attrcache.h); alternating
profiles with look-alikes makes them change class on every call."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from udfs.profile import Profile
from udfs.sketches import Preferences


def lookalike_preferences(p: Preferences) -> SimpleNamespace:
    return SimpleNamespace(slots=p.slots, names=p.names, total=p.total, unsorted=p.unsorted)


def lookalike(p: Profile) -> SimpleNamespace:
    """The same values, shared (not copied); the two properties as plain attributes."""
    values = {f.name: getattr(p, f.name) for f in dataclasses.fields(Profile)}
    values["categories"] = lookalike_preferences(p.categories)
    values["brands"] = lookalike_preferences(p.brands)
    values["event_count"] = p.event_count
    values["distinct_categories"] = p.distinct_categories
    return SimpleNamespace(**values)
