"""The server's front door: aiohttp middlewares and hooks that run before any route.

In order, for every request: the per-address request limit (429 + Retry-After), the Host check
(a loopback server answers only to its loopback names: 421), `GET /health` passes; the Origin
check on WebSocket upgrades and state-changing methods (403); the login form (`POST /login`);
the client (`access.Access`: 401 without the token or a client cookie; `GET /?token=` trades the
token for a cookie and a redirect). The per-address limit on session creation (`creations`) is
taken by the session route once an offer is well formed. Every response carries the security
headers (a Content-Security-Policy without inline script, nosniff, no referrer, no framing).
Every refusal (status >= 400) is one line in the log, with the method, the path (never the
query: it may hold the token) and the peer address; aiohttp's own refusals of malformed requests
are one line too (`OneLineLogger`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from embedtalk_sdk.serve.access import COOKIE, Access, Client
from embedtalk_sdk.serve.ratelimit import RateLimiter

log = logging.getLogger("embedtalk_sdk.serve")

STATIC = Path(__file__).with_name("static")
# request["client"]: the Client of a request, for the routes (a typed key where aiohttp has them)
CLIENT = web.RequestKey("client", Client) if hasattr(web, "RequestKey") else "client"
NEW_COOKIE = web.RequestKey("new_cookie", str) if hasattr(web, "RequestKey") else "new_cookie"
PUBLIC = {("GET", "/health")}
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "media-src 'self' blob:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
}


class Guard:
    """The checks every request passes, for one server. `request[CLIENT]` is set for the routes."""

    def __init__(self, access: Access, requests_per_s: float = 20.0, request_burst: int = 40,
                 sessions_per_min: float = 10.0, session_burst: int = 5, body_timeout_s: float = 30.0) -> None:
        self.access, self.body_timeout_s = access, float(body_timeout_s)
        self.requests = RateLimiter(requests_per_s, request_burst)
        self.creations = RateLimiter(sessions_per_min / 60.0, session_burst)  # taken by the session route
        self.refusals = 0

    def install(self, app: web.Application) -> None:
        """Put the middlewares first in `app` and the security headers on every response."""
        app.middlewares[0:0] = [self._log_refusals, self._check]
        app.on_response_prepare.append(_security_headers)

    @web.middleware
    async def _log_refusals(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as e:
            if e.status >= 400:
                self.refused(request, e.status, e.text or e.reason)
            raise
        if response.status >= 400:
            self.refused(request, response.status, getattr(response, "text", None) or response.reason)
        return response

    @web.middleware
    async def _check(self, request: web.Request, handler) -> web.StreamResponse:
        peer = request.remote or "?"
        wait = self.requests.take(peer)
        if wait:
            raise _too_many("too many requests from this address", wait)
        # request.host is the target's own host when a request names one (GET http://evil/ ...)
        if not (self.access.host_ok(request.headers.get("Host")) and self.access.host_ok(request.host)):
            raise _json_error(web.HTTPMisdirectedRequest, "this server does not answer to that Host name")
        if (request.method, request.path) in PUBLIC:
            return await handler(request)
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if (request.method in STATE_CHANGING or upgrade) and \
                not self.access.origin_ok(request.headers.get("Origin"), request.headers.get("Host")):
            raise _json_error(web.HTTPForbidden, "cross-origin request refused (Origin is not this server)")
        if request.method == "POST" and request.path == "/login":
            raise await self._login(request)
        client = self._client(request)
        request[CLIENT] = client
        response = await handler(request)
        if request.get(NEW_COOKIE) and not response.prepared:
            _set_cookie(response, request[NEW_COOKIE], request.secure)
        return response

    def _client(self, request: web.Request) -> Client:
        access = self.access
        page = request.method == "GET" and request.path == "/"
        if page and access.required and "token" in request.query:
            if not access.token_ok(request.query.get("token")):
                raise login_page("That link's token is not valid.")
            # The token becomes a cookie, and the URL loses it (history, bookmarks, screen shares).
            rest = [(k, v) for k, v in request.query.items() if k != "token"]
            redirect = web.HTTPSeeOther("/" + (f"?{urlencode(rest)}" if rest else ""),
                                        headers={"Cache-Control": "no-store"})
            _set_cookie(redirect, access.new_cookie()[1], request.secure)
            raise redirect
        client = access.identify(request.headers.get("Authorization"), request.cookies.get(COOKIE))
        if client is None:
            if page or (request.method == "GET" and request.path.startswith("/static/")):
                raise login_page("This server needs an invitation: open the link with ?token=... you were given.")
            raise _json_error(web.HTTPUnauthorized, "give the server's token (Authorization: Bearer TOKEN), or open "
                              "the page with the ?token=... link", headers={"WWW-Authenticate": "Bearer"})
        if page and client.via != "cookie":
            request[NEW_COOKIE] = access.new_cookie()[1]  # this browser's own client id
        return client

    async def _login(self, request: web.Request) -> web.HTTPException:
        """The login page's form: the token in a POST body (never in a URL) -> the cookie."""
        if request.content_type != "application/x-www-form-urlencoded":
            return _json_error(web.HTTPUnsupportedMediaType, "the login form posts application/x-www-form-urlencoded")
        if request.content_length is None or request.content_length > 4096:
            return web.HTTPRequestEntityTooLarge(4096, request.content_length or 0, content_type="application/json",
                                                 text='{"error": "the login form is at most 4 KiB"}')
        form = await within(request.post(), self.body_timeout_s)
        token = form.get("token")
        if not self.access.required:
            return web.HTTPSeeOther("/")
        if not isinstance(token, str) or not self.access.token_ok(token.strip()):
            return login_page("That token is not valid.")
        redirect = web.HTTPSeeOther("/", headers={"Cache-Control": "no-store"})
        _set_cookie(redirect, self.access.new_cookie()[1], request.secure)
        return redirect

    def refused(self, request: web.Request, status: int, why: str | None) -> None:
        """Count and log one refusal (one line; never the query or a header)."""
        self.refusals += 1
        log.warning("refused %s %s from %s: %d %s", request.method, printable(request.path, 100),
                    request.remote or "?", status, printable(_reason(why), 160))


class OneLineLogger:
    """The logger aiohttp's request handler writes to: a malformed request it refuses (400, 431,
    ...) becomes one warning line; a real error keeps its traceback."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger

    def debug(self, msg: str, *args, exc_info=None, **kw) -> None:
        # a request that is not HTTP at all (aiohttp says so at debug level); else disconnections
        # and the like: not refusals, not errors
        if isinstance(exc_info, HttpProcessingError):
            self._refused(args, exc_info)

    def exception(self, msg: str, *args, exc_info=None, **kw) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self._refused(args, exc_info)
        else:
            self.logger.exception(msg, *args, exc_info=exc_info, **kw)

    def _refused(self, args: tuple, exc: HttpProcessingError) -> None:
        remote = args[0] if args else "?"
        self.logger.warning("refused a malformed request from %s: %d %s", remote, exc.code, printable(exc.message, 120))

    def __getattr__(self, name):  # warning, info, ...: as the real logger
        return getattr(self.logger, name)


async def within(awaitable, seconds: float):
    """Await a request body read, or refuse it (408) when the client is slower than `seconds`."""
    import asyncio

    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise _json_error(web.HTTPRequestTimeout, f"the request body did not arrive within {seconds:g} s") from None


def login_page(message: str) -> web.HTTPUnauthorized:
    """401 with the page that asks for the token (a form that POSTs it: it never enters a URL)."""
    html = (STATIC / "login.html").read_text().replace("{message}", message)
    return web.HTTPUnauthorized(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})


def printable(text: str, limit: int) -> str:
    """`text` safe for one log line: control characters escaped, at most `limit` characters."""
    out = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _set_cookie(response: web.StreamResponse, value: str, secure: bool) -> None:
    response.set_cookie(COOKIE, value, httponly=True, samesite="Lax", secure=secure, path="/")


def _too_many(message: str, wait: float) -> web.HTTPTooManyRequests:
    return _json_error(web.HTTPTooManyRequests, message, headers={"Retry-After": RateLimiter.retry_after(wait)})


def _json_error(cls, message: str, headers: dict | None = None):
    import json

    return cls(text=json.dumps({"error": message}), content_type="application/json", headers=headers)


def _reason(text: str | None) -> str:
    """The error message of a JSON body, else the text's first line."""
    if not text:
        return ""
    if text.startswith('{"error"'):
        import json

        try:
            return str(json.loads(text)["error"])
        except (ValueError, KeyError, TypeError):
            pass
    if text.lstrip().startswith("<"):
        return "login page"
    return text.splitlines()[0] if text.strip() else ""


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.content_type == "application/json":
        response.headers.setdefault("Cache-Control", "no-store")
