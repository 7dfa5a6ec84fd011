"""Sealing and opening session tokens with the controller's current key ring."""

from __future__ import annotations

from datetime import datetime

from controller.keyring import KeyRingFile
from controller.tokens import SessionClaims, seal, token_key_id, unseal


class Sessions:
    """Seals with the active key; opens with any key of the ring, re-reading the ring's file when
    a token names a key this process does not know yet (a rotation by the CLI)."""

    def __init__(self, keys: KeyRingFile) -> None:
        self._keys = keys

    def seal(self, claims: SessionClaims) -> str:
        return seal(claims, self._keys.ring)

    def open(self, token: str, now: datetime) -> SessionClaims:
        key_id = token_key_id(token)
        if key_id is not None and self._keys.ring.get(key_id) is None:
            self._keys.refresh()
        return unseal(token, self._keys.ring, now)

    def refresh(self) -> None:
        """Pick up a rotation done on disk (called periodically by the controller)."""
        self._keys.refresh()
