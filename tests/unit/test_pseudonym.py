"""The BI pseudonym is HMAC-SHA256 of the UTF-8 user_id under the key (udfs.pseudonym), whatever
the memo holds, and the key never leaves the object (JVM-free)."""

from __future__ import annotations

import hashlib
import hmac
import pickle
import random

import pytest

from udfs.pseudonym import Pseudonymiser


@pytest.mark.parametrize("key", [b"k" * 16, bytes(range(64)), b"a much longer secret " * 8])
def test_a_pseudonym_is_the_hmac_sha256_of_the_user_id(key: bytes) -> None:
    rng = random.Random(7)
    users = ["", "u1", "Zoë-été-東京", "x" * 300] + [
        f"user-{rng.randrange(10**12)}" for _ in range(500)
    ]
    pseudonym = Pseudonymiser(key, memo=50)  # the memo fills, is cleared, fills again
    for _ in range(2):
        for user in users:
            expected = hmac.new(key, user.encode("utf-8"), hashlib.sha256).hexdigest()
            assert pseudonym(user) == expected


def test_the_key_is_not_shown_or_pickled() -> None:
    key = b"a secret key of 32 bytes........"
    pseudonym = Pseudonymiser(key)
    assert key.decode() not in repr(pseudonym) and key.decode() not in str(pseudonym)
    with pytest.raises(TypeError, match="holds a secret"):
        pickle.dumps(pseudonym)
