"""Pseudonyms for BI: HMAC-SHA256 of the user_id under a secret key.

The key comes from `PROFILESTREAM_PSEUDONYM_KEY_FILE` (a file holding it, the way Docker and
Kubernetes mount secrets) or `PROFILESTREAM_PSEUDONYM_KEY` (the key itself). It is read where it
is used (the job's workers, the CLI), never put in the job's configuration, and never printed:
only its fingerprint (`key_id`, an HMAC of a fixed text, which reveals nothing about the key) is
stored and shown. Rotating it: see README "Data protection".
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from udfs.errors import PseudonymKeyError

ENV_KEY = "PROFILESTREAM_PSEUDONYM_KEY"
ENV_KEY_FILE = "PROFILESTREAM_PSEUDONYM_KEY_FILE"
MIN_KEY_BYTES = 16
_KEY_ID_INPUT = b"profilestream pseudonym key id v1"


def load_key(key_file: Path | str | None = None, environ: Mapping[str, str] = os.environ) -> bytes:
    """The key from `key_file`, else $PROFILESTREAM_PSEUDONYM_KEY_FILE, else
    $PROFILESTREAM_PSEUDONYM_KEY. Surrounding whitespace (a file's final newline) is ignored."""
    path = key_file or environ.get(ENV_KEY_FILE)
    if path:
        setting = f"{ENV_KEY_FILE}={path}" if not key_file else f"--pseudonym-key-file {path}"
        try:
            key = Path(path).read_bytes().strip()
        except OSError as exc:
            raise PseudonymKeyError(
                f"{setting}: cannot read the pseudonym key ({exc.strerror}): point it at a "
                "readable file holding the key"
            ) from None
    elif environ.get(ENV_KEY):
        setting = ENV_KEY
        key = environ[ENV_KEY].strip().encode("utf-8")
    else:
        raise PseudonymKeyError(
            f"no pseudonym key: set {ENV_KEY_FILE} to a file holding a secret of at least "
            f"{MIN_KEY_BYTES} bytes (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'"
            f" > key; chmod 600 key`), or {ENV_KEY} to the secret itself"
        )
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(
            f"{setting}: the pseudonym key has {len(key)} bytes, fewer than {MIN_KEY_BYTES}: "
            "use a longer random secret"
        )
    return key


def ensure_key_file(path: Path, environ: dict[str, str] | None = None) -> Path | None:
    """For the embedded default (`make demo`): when no key is configured, create a random one at
    `path` (mode 0600, kept across runs) and point PROFILESTREAM_PSEUDONYM_KEY_FILE at it.
    Returns the file it created or reused, None when a key was configured already."""
    env = os.environ if environ is None else environ
    if env.get(ENV_KEY_FILE) or env.get(ENV_KEY):
        return None
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    env[ENV_KEY_FILE] = str(path)
    return path


class Pseudonymiser:
    """user_id -> 64 hex digits. Never shows the key (repr, str and pickling included).

    Remembers the pseudonyms of up to `memo` recent users (the job asks for the same user's on
    every update of their profile; an HMAC costs about 2 us)."""

    __slots__ = ("_keyed", "_memo", "key_id", "memo")

    def __init__(self, key: bytes, memo: int = 100_000) -> None:
        # Keyed once and copied per user: a copy skips the key schedule and OpenSSL's lookup of
        # the algorithm, which a one-shot hmac.digest repeats (1.2 against 1.9 us per user).
        keyed = hmac.new(key, digestmod=hashlib.sha256)
        # hmac.HMAC's copy, update and hexdigest are Python wrappers around OpenSSL's HMAC
        # object (its `_hmac`, when Python is built with OpenSSL): use that object directly.
        self._keyed: Any = getattr(keyed, "_hmac", None) or keyed
        self.key_id = hmac.digest(key, _KEY_ID_INPUT, hashlib.sha256).hex()[:16]
        self.memo = memo
        self._memo: dict[str, str] = {}

    def __call__(self, user_id: str) -> str:
        pseudonym = self._memo.get(user_id)
        if pseudonym is None:
            mac = self._keyed.copy()
            mac.update(user_id.encode("utf-8"))
            pseudonym = mac.hexdigest()
            if len(self._memo) >= self.memo:
                self._memo.clear()
            self._memo[user_id] = pseudonym
        return pseudonym

    def __repr__(self) -> str:
        return f"Pseudonymiser(key_id={self.key_id})"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a Pseudonymiser holds a secret and is not pickled; load the key instead")
