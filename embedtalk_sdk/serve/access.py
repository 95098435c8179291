"""Who may use the server, and as whom: the token, client cookies, Host and Origin checks.

A server started with a token admits a request that carries it (`Authorization: Bearer TOKEN`,
for API clients) or a client cookie the server issued (for the page: `GET /?token=TOKEN` answers
with the cookie and a redirect to the same URL without the token). Every client cookie names its
own client, so sessions belong to one browser, not to everyone who knows the token; all bearer
requests are one client ("token"). Without a token (`--no-auth`, or a loopback bind) every
request is admitted, and the page still gets a cookie of its own so browsers keep to their own
sessions. Secrets are compared in constant time (`hmac.compare_digest`), and no secret is ever
written to a log.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

COOKIE = "embedtalk_client"
CLIENT_ID_BYTES = 16            # 128 random bits per client cookie
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
TOKEN_CLIENT = "token"          # the one client of every `Authorization: Bearer` request
OPEN_CLIENT = "anonymous"       # a request without credentials on a server without a token


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; False for 0.0.0.0, names and other addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, no_auth: bool) -> None:
    """Refuse a configuration that would open the server to the network without access control."""
    if token is not None and no_auth:
        raise ValueError("--token and --no-auth contradict each other: choose one")
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} random ones, e.g. "
                         "python -c 'import secrets; print(secrets.token_urlsafe(24))'")
    if token is None and not no_auth and not is_loopback(host):
        raise ValueError(f"--host {host} exposes the server to the network without a token: give --token "
                         "(or EMBEDTALK_TOKEN), or say --no-auth to let anyone who reaches the port use it")


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two strings (any characters)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


@dataclass(frozen=True)
class Client:
    """Who made a request: `id` owns the sessions it opens; `via` is "cookie", "token" or "open"."""

    id: str
    via: str


class Access:
    """The access rules of one server.

    token: None admits everyone (then `hosts` should be loopback names: see `host_ok`).
    hosts: the Host names the server answers to (None: any). A loopback server keeps to its
    loopback names, so a web page on another domain that resolves to 127.0.0.1 (DNS rebinding)
    is refused. origins: extra origins allowed on the WebSocket and state-changing requests
    besides the server's own (a reverse proxy that rewrites Host)."""

    def __init__(self, token: str | None = None, hosts: tuple[str, ...] | None = None,
                 origins: tuple[str, ...] = ()) -> None:
        self.token = token
        self.hosts = None if hosts is None else {h.lower().strip("[]") for h in hosts}
        self.origins = {_origin_netloc(o) for o in origins}
        # Cookies are signed with a key derived from the token, so they outlive a restart with the
        # same token and die with a new one; without a token, with a key of this process.
        seed = b"embedtalk client cookie\0" + token.encode() if token else secrets.token_bytes(32)
        self._key = hashlib.sha256(seed).digest()

    @property
    def required(self) -> bool:
        return self.token is not None

    def token_ok(self, given: str | None) -> bool:
        return self.token is not None and given is not None and same_secret(given, self.token)

    def new_cookie(self) -> tuple[str, str]:
        """A fresh client: (its id, the cookie value that proves it)."""
        cid = secrets.token_urlsafe(CLIENT_ID_BYTES)
        return cid, f"{cid}.{self._sign(cid)}"

    def cookie_client(self, value: str | None) -> str | None:
        """The client id a cookie value proves, or None (absent, malformed or forged)."""
        if not value or len(value) > 200 or "." not in value:
            return None
        cid, mac = value.rsplit(".", 1)
        return cid if same_secret(mac, self._sign(cid)) else None

    def identify(self, authorization: str | None, cookie: str | None) -> Client | None:
        """The client of a request from its Authorization header and client cookie, or None when it
        must be refused (no credentials, or wrong ones, on a server with a token)."""
        if authorization is not None:
            scheme, _, given = authorization.partition(" ")
            if self.required:
                return Client(TOKEN_CLIENT, "token") if scheme.lower() == "bearer" and self.token_ok(given.strip()) \
                    else None
        cid = self.cookie_client(cookie)
        if cid is not None:
            return Client(cid, "cookie")
        return None if self.required else Client(OPEN_CLIENT, "open")

    def host_ok(self, host_header: str | None) -> bool:
        """Whether the Host header names this server (always, when `hosts` is None)."""
        if self.hosts is None:
            return True
        if not host_header:
            return False
        name = urlsplit("//" + host_header).hostname
        return name is not None and name.lower() in self.hosts

    def origin_ok(self, origin: str | None, host_header: str | None) -> bool:
        """A browser's Origin must be this server's (its netloc equals the Host it asked for) or an
        allowed one; a request without Origin is not from a web page's script and passes."""
        if origin is None:
            return True
        netloc = _origin_netloc(origin)
        if not netloc:
            return False  # "null" (sandboxed frames, file:) or unreadable
        return netloc in self.origins or (host_header is not None and netloc == host_header.lower())

    def _sign(self, cid: str) -> str:
        return hmac.new(self._key, cid.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def _origin_netloc(origin: str) -> str:
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return ""
    return parts.netloc.lower() if parts.scheme in ("http", "https") else ""
