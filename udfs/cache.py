"""A write-through cache of decoded profiles, one per operator instance.

Why it is safe in the job: an operator instance is the only reader and writer of its keys'
state, so after it writes a profile's bytes the decoded profile it holds is exactly what a read
would return (the encoding is exact, `udfs.codec`); a restore, a restart or a rescale creates
a new instance whose cache starts empty. The cache only saves the state read and the decoding; the
state is still written on every change, so checkpoints hold everything.

Bounded: beyond `capacity` profiles the least recently written one is dropped (the next event of
that user reads its state again). The order lives in an `OrderedDict` (a linked list beside the
hash table), so a put is O(1) however many users pass through: a plain dict used as a queue
(`del items[next(iter(items))]`) has to step over every entry deleted at its front since its last
resize, which cost ~100 µs per event once the cache was full (a million users, docs/performance.md).
"""

from __future__ import annotations

from collections import OrderedDict

from udfs.profile import Profile

DEFAULT_CAPACITY = 100_000


class ProfileCache:
    __slots__ = ("_items", "capacity", "hits", "misses")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 0:
            raise ValueError(f"profile cache capacity must be >= 0, not {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, Profile] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Profile | None:
        """The profile last written for `key`, or None when not held (read the state)."""
        profile = self._items.get(key)
        if profile is None:
            self.misses += 1
        else:
            self.hits += 1
        return profile

    def put(self, key: str, profile: Profile) -> None:
        """`profile` was just written as `key`'s state."""
        items = self._items
        if key in items:
            items.move_to_end(key)  # the most recently written
        elif len(items) >= self.capacity:
            if not self.capacity:
                return
            items.popitem(last=False)  # the least recently written
        items[key] = profile

    def drop(self, key: str) -> None:
        """`key`'s state was cleared (or changed behind the cache's back)."""
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)
