"""Sealing and opening session tokens with the controller's current key ring."""

from __future__ import annotations

from datetime import datetime

from controller.keyring import KeyRingError, KeyRingSource
from controller.store.base import StoreError
from controller.tokens import SessionClaims, seal, token_key_id, unseal


class Sessions:
    """Seals with the active key; opens with any key of the ring, re-reading the ring (its file,
    or its row in the database) when a token names a key this process does not know yet (a
    rotation by the CLI, which another controller may have sealed with already)."""

    def __init__(self, keys: KeyRingSource) -> None:
        self._keys = keys

    def seal(self, claims: SessionClaims) -> str:
        return seal(claims, self._keys.ring)

    def open(self, token: str, now: datetime) -> SessionClaims:
        key_id = token_key_id(token)
        if key_id is not None and self._keys.ring.get(key_id) is None:
            try:
                self._keys.refresh()
            except KeyRingError as error:
                # The ring cannot be read now (its file, or the database): the request fails
                # as one whose store failed (try again), not as one with an invalid token.
                raise StoreError(str(error)) from None
        return unseal(token, self._keys.ring, now)

    def refresh(self) -> None:
        """Pick up a rotation (called periodically, and on PostgreSQL when one is announced)."""
        self._keys.refresh()
