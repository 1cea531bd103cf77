"""Locks whose value is their holder's token: taken with ``SET NX``, released only by that holder.

Used by the reconciler's and the reclaimer's sweep locks, the verdict cache's in-flight locks and the results sink's
per-shard locks. Release is a compare-and-delete in one Lua step (``tokenlock_release.lua``), so a holder whose lock
expired and was taken by another never deletes the new holder's lock.
"""

from __future__ import annotations

from pathlib import Path

import redis

_RELEASE = Path(__file__).with_name("tokenlock_release.lua").read_text()


class Releaser:
    """Releases token locks on one Redis client (the script is registered once)."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._script = client.register_script(_RELEASE)

    def __call__(self, key: str, token: str) -> bool:
        """Delete ``key`` if it still holds ``token``; True when it did."""
        return bool(self._script(keys=[key], args=[token]))
