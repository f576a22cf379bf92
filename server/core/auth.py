"""Bearer-token authentication with PyJWT: the host platform issues, we verify.

The algorithm is pinned by configuration (HS256 with a secret, or RS256/ES256
with a PEM public key); `alg: none` and every other algorithm are refused by
PyJWT because only the pinned one is passed in `algorithms`. `sub` (the user
id) and `exp` are required. Dev login mints HS256 tokens with the same secret.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from server.core.errors import Unauthorized
from server.core.parse import is_user_id
from server.core.settings import Settings


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: user id (`sub`) and the token's claims."""

    user_id: str
    claims: dict[str, Any] = field(default_factory=dict)


class Authenticator:
    """Verifies tokens; mints dev tokens when the algorithm is HS256."""

    def __init__(self, settings: Settings, secret: bytes | None = None) -> None:
        """`secret`: the HS256 key when `settings.jwt_secret` is unset (the deployment's
        generated one, `store.secrets`). Raises ValueError for HS256 with neither."""
        self.algorithm = settings.jwt_algorithm
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.dev_ttl_s = settings.dev_token_ttl_s
        self.leeway_s = settings.jwt_leeway_s
        # The verification key is prepared once (a sign-in storm verifies thousands of
        # tokens a second): HS256 as a PyJWK bound to its algorithm, RS256/ES256 as the
        # parsed public key (PyJWT would otherwise parse the PEM on every call).
        if self.algorithm == "HS256":
            key = settings.jwt_secret.encode() if settings.jwt_secret else secret
            if not key:
                raise ValueError("HS256 needs jwt_secret or the deployment's generated secret")
            self._secret: bytes = key
            k = base64.urlsafe_b64encode(self._secret).rstrip(b"=").decode()
            self._verify_key: Any = jwt.PyJWK({"kty": "oct", "k": k}, algorithm="HS256")
        else:
            self._secret = b""
            pem = Path(settings.jwt_public_key_file or "").read_bytes()
            self._verify_key = jwt.get_algorithm_by_name(self.algorithm).prepare_key(pem)

    def verify(self, token: str | None) -> Principal:
        """Claims of a valid token. Raises Unauthorized (401) otherwise."""
        if not token:
            raise Unauthorized("a bearer token is required")
        try:
            claims = jwt.decode(
                token,
                self._verify_key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["sub", "exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not is_user_id(sub):
            raise Unauthorized("token `sub` must be 1-64 of [A-Za-z0-9_-]")
        return Principal(user_id=sub, claims=claims)

    def mint(self, user_id: str, now_s: int, **claims: Any) -> str:
        """An HS256 token for `user_id` valid `dev_token_ttl_s`; for dev login and tests."""
        if self.algorithm != "HS256":
            raise RuntimeError("dev tokens need jwt_algorithm HS256")
        payload = {"sub": user_id, "iat": now_s, "exp": now_s + self.dev_ttl_s, **claims}
        if self.audience:
            payload.setdefault("aud", self.audience)
        if self.issuer:
            payload.setdefault("iss", self.issuer)
        return jwt.encode(payload, self._secret, algorithm="HS256")


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
