"""Optional API keys: ``Authorization: Bearer <key>`` on inference and repository routes.

``--api-keys-file FILE`` (``IMGCLS_API_KEYS_FILE``) names a file with one key per line (blank lines
and lines starting with ``#`` ignored); the workers read it at start, never the environment, so a key
is in no process listing and no log. A request's key is compared with every key in constant time
(``hmac.compare_digest``). Without the right key the answer is 401 with ``WWW-Authenticate: Bearer``,
as JSON in the route's protocol (``{"error": "..."}`` under ``/v2``). Which route groups stay open
without a key is ``--public-routes`` (``health``: ``/livez``, ``/healthz``, ``/readyz``,
``/v2/health/*``; ``metrics``: ``/metrics``; ``ui``: ``/ui`` and the API docs); everything else,
unknown paths included, needs a key.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
from pathlib import Path
from typing import Any

from imgcls.models.core.errors import ConfigError

GROUPS: dict[str, tuple[str, ...]] = {  # exact paths, or prefixes ending with "/"
    "health": ("/livez", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"),
    "metrics": ("/metrics",),
    "ui": ("/ui", "/ui/", "/", "/docs.json", "/schema.json", "/static_content/"),
}
CHALLENGE = [(b"www-authenticate", b'Bearer realm="imgcls"')]


def read_keys(path: str | Path) -> tuple[bytes, ...]:
    """The keys of a key file; ``ConfigError`` (naming the file, never a key) when unreadable or empty."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--api-keys-file / IMGCLS_API_KEYS_FILE {path}: cannot read it ({exc.__class__.__name__})") from None
    keys = tuple(line.strip().encode() for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    if not keys:
        raise ConfigError(f"--api-keys-file / IMGCLS_API_KEYS_FILE {path}: holds no key (one key per line)")
    return keys


def public_groups(text: str) -> frozenset[str]:
    groups = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = groups - set(GROUPS)
    if unknown:
        raise ConfigError(f"--public-routes / IMGCLS_PUBLIC_ROUTES: unknown group(s) {sorted(unknown)} "
                          f"(choose from {sorted(GROUPS)})")
    return groups


def is_public(path: str, groups: frozenset[str]) -> bool:
    for group in groups:
        for entry in GROUPS[group]:
            if path == entry or (entry.endswith("/") and entry != "/" and path.startswith(entry)):
                return True
    return False


def key_matches(candidate: bytes, keys: tuple[bytes, ...]) -> bool:
    """Constant time per key, and every key is compared (no early exit that would tell which matched)."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class APIKeyMiddleware:
    """ASGI middleware: a request that needs a key and lacks the right one gets 401 (see the module doc)."""

    def __init__(self, app: Any, keys: tuple[bytes, ...], public: frozenset[str]) -> None:
        self.app = app
        self.keys = keys
        self.public = public

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or not self.keys or scope["method"] == "OPTIONS"
                or is_public(scope["path"], self.public)):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, candidate = header.partition(b" ")
        if scheme.lower() == b"bearer" and candidate.strip() and key_matches(candidate.strip(), self.keys):
            await self.app(scope, receive, send)
            return
        await self._refuse(scope, send, "missing" if not header else "wrong")

    @staticmethod
    async def _refuse(scope: dict, send: Any, what: str) -> None:
        message = (f"an API key is required: send Authorization: Bearer <key>" if what == "missing"
                   else "the API key is not valid (Authorization: Bearer <key>)")
        if scope["path"].startswith("/v2"):
            body = {"error": message}  # the Open Inference Protocol's error document
        else:
            body = {"error": {"status": 401, "reason": "unauthorized", "message": message}}
        content = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()), *CHALLENGE]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": content})
