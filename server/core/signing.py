"""HMAC-signed media URLs, bound to one item, one variant, a scope and an expiry.

A URL is `/media/<item_id>/<variant>?s=<scope>&exp=<ms>&sig=<mac>`, where
`mac = base64url(HMAC-SHA256(secret, "item|variant|scope|exp"))[:32]`.
Scope `live` URLs expire with the item (`exp` is its `expires_at`) and the
media endpoint also refuses them once the item is deleted; scope `archive`
URLs are issued to the owner only, for the archive. URLs are not bound to a
viewer: the audience is enforced when a URL is issued, and one pushed
`story.new` frame can be encoded once for every recipient (docs/protocol.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

VARIANTS = ("file", "poster")


class MediaSigner:
    """Sign and verify media URLs with one secret (bytes)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, item_id: str, variant: str, scope: str, exp_ms: int) -> str:
        msg = f"{item_id}|{variant}|{scope}|{exp_ms}".encode()
        digest = hmac.new(self._secret, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:32]

    def url(self, item_id: str, variant: str, scope: str, exp_ms: int) -> str:
        """The signed path+query for `variant` ("file" or "poster") of `item_id`."""
        sig = self._mac(item_id, variant, scope, exp_ms)
        return f"/media/{item_id}/{variant}?s={quote(scope)}&exp={exp_ms}&sig={sig}"

    def verify(self, item_id: str, variant: str, scope: str, exp_ms: int, sig: str) -> bool:
        """True when `sig` matches (constant-time compare). Expiry is the caller's check.

        Compares bytes: `hmac.compare_digest` raises TypeError for a `str` that
        is not ASCII, and a client may send any text as `sig`.
        """
        expected = self._mac(item_id, variant, scope, exp_ms)
        return hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace"))
