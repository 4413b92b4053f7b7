"""``doorface serve``: the review page, served by the standard library.

Why ``http.server`` (``ThreadingHTTPServer``) and no web framework: the runtime installs on a Raspberry Pi with five
dependencies, and this page is a handful of JSON routes and three static files for one household on the local
network. Flask or FastAPI would add a dependency tree (and for FastAPI a compiled one) to every Pi for that, and
the standard library's server is maintained with Python itself. What a framework would have given is written out
here in a few lines: a route table, JSON errors, a size limit on bodies, and the checks below.

Security, in order:

* It binds 127.0.0.1 by default. Bound anywhere else it refuses to start without a token (``review.token_env`` /
  ``review.token_file``); with a token every request must carry it: ``Authorization: Bearer <token>``, or the cookie
  the page sets when opened once as ``/?token=<token>`` (HttpOnly, SameSite=Strict). Tokens are compared in constant
  time.
* Changes are POSTs that must carry ``X-Requested-With: doorface`` and, when the browser sends one, an ``Origin`` of
  this very server: another web site cannot make a visitor's browser change the gallery (no CORS is ever granted).
* On loopback, the ``Host`` must be a loopback name: a DNS-rebinding page cannot reach it under another name.
* Bodies are size-limited from ``Content-Length`` before they are read (``review.max_upload_mb``), and an uploaded
  photo is size-checked from its header (``review.max_upload_pixels``) before it is decoded.

Every request opens the gallery file anew (a few milliseconds): SQLite connections stay in their thread, and what
``doorface run`` wrote a moment ago is on the page. Each change is one transaction; of two browsers acting on the
same group at once, the second is told the group is gone (HTTP 404) and nothing is half done.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import parse_qs, urlsplit

from edge.config import Config, ConfigError
from edge.gallery import GalleryError, InvalidNameError, NameTakenError, PersonNotFound, SampleNotFound
from edge.image_io import ImageError
from edge.visits import GroupNotFound, VisitError, VisitNotFound

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
COOKIE = "doorface_token"
CSRF_HEADER = "X-Requested-With"
CSRF_VALUE = "doorface"
DISCARD_LIMIT = 256 * 1024 * 1024  # an oversized body up to this is read and dropped to answer 413 cleanly
VISITS_SHOWN = 120


class ServeError(ValueError):
    """The page cannot be served as configured (no token off loopback, port in use)."""


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _status_of(exc: Exception) -> HTTPStatus:
    if isinstance(exc, (GroupNotFound, VisitNotFound, PersonNotFound, SampleNotFound)):
        return HTTPStatus.NOT_FOUND
    if isinstance(exc, NameTakenError):
        return HTTPStatus.CONFLICT
    if isinstance(exc, (InvalidNameError, VisitError, ImageError, ValueError)):
        return HTTPStatus.BAD_REQUEST
    if isinstance(exc, GalleryError) and "locked" in str(exc):
        return HTTPStatus.SERVICE_UNAVAILABLE
    return HTTPStatus.INTERNAL_SERVER_ERROR


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern
    handler: str  # name of a ReviewApp method taking (match, request) -> response


def _route(method: str, pattern: str, handler: str) -> Route:
    return Route(method, re.compile(f"^{pattern}$"), handler)


ROUTES = (
    _route("GET", r"/api/state", "state"),
    _route("GET", r"/api/visits/(\d+)/crop\.jpg", "visit_crop"),
    _route("GET", r"/api/samples/(\d+)\.jpg", "sample_thumbnail"),
    _route("POST", r"/api/groups/(\d+)/name", "name_group"),
    _route("POST", r"/api/groups/(\d+)/add", "add_group"),
    _route("POST", r"/api/visits/(\d+)/not-person", "not_person"),
    _route("POST", r"/api/people/rename", "rename"),
    _route("POST", r"/api/people/merge", "merge"),
    _route("POST", r"/api/people/remove", "remove"),
    _route("POST", r"/api/people/exclude-sample", "exclude_sample"),
    _route("POST", r"/api/people/photo", "add_photo"),
)


@dataclass(frozen=True)
class Request:
    query: dict
    body: bytes
    content_type: str

    def json(self) -> dict:
        if not self.content_type.startswith("application/json"):
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON (Content-Type: application/json)")
        try:
            data = json.loads(self.body.decode("utf-8") or "{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"the request body is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
        return data

    def text(self, data: dict, key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"'{key}' (text) is required")
        return value


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    body: bytes
    content_type: str

    @classmethod
    def of_json(cls, data, status: HTTPStatus = HTTPStatus.OK) -> Response:
        return cls(status, json.dumps(data).encode("utf-8"), "application/json")


class ReviewApp:
    """The page's routes over the configured gallery; no HTTP in here but the status codes."""

    def __init__(self, config: Config):
        from edge.review.commands import open_review

        self.config = config
        self._open = lambda: open_review(config)
        self._models = None
        self._models_lock = threading.Lock()  # the TFLite interpreters are not thread-safe

    def state(self, _match, _request) -> Response:
        with self._open() as (gallery, log):
            people = []
            for person in gallery.persons():
                samples = gallery.samples(person.name)
                people.append({"name": person.name, "embeddings": person.embeddings,
                               "samples": [{"id": s.id, "source": s.source, "has_thumbnail": s.has_thumbnail}
                                           for s in samples]})
            return Response.of_json({
                "camera": self.config.camera.name,
                "visits": [v.to_dict() for v in log.visits(limit=VISITS_SHOWN)],
                "groups": [g.to_dict() for g in log.groups()],
                "people": people,
                "retention": {"days": self.config.visits.days, "max_mb": self.config.visits.max_mb},
            })

    def visit_crop(self, match, _request) -> Response:
        with self._open() as (_, log):
            return Response(HTTPStatus.OK, log.crop(int(match.group(1))), "image/jpeg")

    def sample_thumbnail(self, match, _request) -> Response:
        with self._open() as (gallery, _):
            return Response(HTTPStatus.OK, gallery.sample_thumbnail(int(match.group(1))), "image/jpeg")

    def name_group(self, match, request) -> Response:
        name = request.text(request.json(), "name")
        with self._open() as (_, log):
            person = log.name_group(int(match.group(1)), name)
        return Response.of_json({"person": person.name, "embeddings": person.embeddings})

    def add_group(self, match, request) -> Response:
        name = request.text(request.json(), "person")
        with self._open() as (_, log):
            person = log.add_group(int(match.group(1)), name)
        return Response.of_json({"person": person.name, "embeddings": person.embeddings})

    def not_person(self, match, _request) -> Response:
        with self._open() as (_, log):
            visit = log.not_person(int(match.group(1)))
        return Response.of_json(visit.to_dict())

    def rename(self, _match, request) -> Response:
        data = request.json()
        with self._open() as (gallery, _):
            person = gallery.rename(request.text(data, "name"), request.text(data, "new_name"))
        return Response.of_json({"person": person.name})

    def merge(self, _match, request) -> Response:
        data = request.json()
        with self._open() as (gallery, _):
            person = gallery.merge(request.text(data, "name"), request.text(data, "into"))
        return Response.of_json({"person": person.name, "embeddings": person.embeddings})

    def remove(self, _match, request) -> Response:
        with self._open() as (gallery, _):
            person = gallery.remove(request.text(request.json(), "name"))
        return Response.of_json({"removed": person.name})

    def exclude_sample(self, _match, request) -> Response:
        data = request.json()
        sample = data.get("sample")
        if not isinstance(sample, int):
            raise HttpError(HTTPStatus.BAD_REQUEST, "'sample' (the id of an enrolled face) is required")
        with self._open() as (gallery, _):
            person = gallery.exclude_sample(request.text(data, "name"), sample)
        return Response.of_json({"person": person.name, "embeddings": person.embeddings})

    def add_photo(self, _match, request) -> Response:
        """A photo (the raw body) of ``?name=`` enrolls them, or adds a face to them."""
        from edge.enroll import enroll_frames
        from edge.image_io import decode_image
        from edge.matcher import threshold_from_entry

        names = request.query.get("name") or [""]
        if not request.content_type.startswith("image/"):
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the photo itself as the body (Content-Type: "
                                                               "image/jpeg or image/png)")
        image = decode_image(request.body, "(uploaded photo)", max_pixels=self.config.review.max_upload_pixels)
        models = self._load_models()
        threshold = threshold_from_entry(models.manifest.entry(models.embedder.key), self.config.embedder.threshold)
        with self._models_lock, self._open() as (gallery, _):
            report = enroll_frames(gallery, names[0], [("upload", image)], models.detector, models.embedder,
                                   gate=self.config.quality, settings=self.config.enroll,
                                   thumbnails=True, threshold=threshold)
        if report.enrolled == 0:
            reason = report.outcomes[0].message if report.outcomes else "no face found"
            raise HttpError(HTTPStatus.UNPROCESSABLE_ENTITY, f"no face enrolled from that photo: {reason}")
        return Response.of_json({"person": report.name, "embeddings": report.person.embeddings})

    def _load_models(self):
        with self._models_lock:
            if self._models is None:
                from edge.runner import load_models

                logger.info("loading the detector and embedder for photo uploads")
                self._models = load_models(self.config)
            return self._models


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, app: ReviewApp, *, token: Optional[str], max_body: int, loopback: bool):
        self.app = app
        self.token = token
        self.max_body = max_body
        self.loopback = loopback
        super().__init__(address, ReviewHandler)


class ReviewHandler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "doorface-review"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        logger.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def _handle(self, method: str) -> None:
        try:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            self._check_host()
            if method == "GET" and url.path == "/" and "token" in query:
                return self._login(query["token"][0])
            self._check_token()
            if method == "GET" and not url.path.startswith("/api/"):
                return self._send(self._static(url.path))
            if method == "POST":
                self._check_origin()
            body = self._read_body() if method == "POST" else b""
            for route in ROUTES:
                match = route.pattern.match(url.path)
                if match and route.method == method:
                    request = Request(query, body, self.headers.get("Content-Type", ""))
                    return self._send(getattr(self.server.app, route.handler)(match, request))
            if any(route.pattern.match(url.path) for route in ROUTES):
                raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed on {url.path}")
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such page or API route: {url.path}")
        except HttpError as exc:
            self._send(Response.of_json({"error": str(exc)}, exc.status))
        except (GalleryError, ImageError, ValueError, ConfigError) as exc:
            status = _status_of(exc)
            if status == HTTPStatus.INTERNAL_SERVER_ERROR:
                logger.error("%s %s: %s", method, self.path, exc)
            self._send(Response.of_json({"error": str(exc)}, status))

    # --- checks ------------------------------------------------------------------------------------------------------

    def _check_host(self) -> None:
        if not self.server.loopback:
            return
        host = urlsplit(f"//{self.headers.get('Host') or ''}").hostname or ""
        if not is_loopback(host):
            raise HttpError(HTTPStatus.FORBIDDEN, f"this page answers on 127.0.0.1 / localhost only, not {host!r}")

    def _check_token(self) -> None:
        token = self.server.token
        if token is None:
            return
        given = ""
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[len("Bearer "):].strip()
        else:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
            if COOKIE in cookie:
                given = cookie[COOKIE].value
        if not given or not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            raise HttpError(HTTPStatus.UNAUTHORIZED, "a token is required: open the page once as /?token=<token> "
                                                     "(the token is in the variable named by review.token_env or in "
                                                     "review.token_file on the device)")

    def _check_origin(self) -> None:
        if self.headers.get(CSRF_HEADER) != CSRF_VALUE:
            raise HttpError(HTTPStatus.FORBIDDEN, f"changes need the header {CSRF_HEADER}: {CSRF_VALUE} (the page "
                                                  "sends it; another web site cannot)")
        origin = self.headers.get("Origin")
        if origin and urlsplit(origin).netloc != self.headers.get("Host"):
            raise HttpError(HTTPStatus.FORBIDDEN, f"changes from another site ({origin}) are refused")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length")
        try:
            size = int(length)
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length!r}") from None
        limit = self.server.max_body
        if size < 0 or size > limit:
            self._discard(size)
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"the upload is {size / 1e6:.1f} MB, more than review.max_upload_mb = {limit / 1e6:g} MB; "
                            "send a smaller photo")
        return self.rfile.read(size)

    def _discard(self, size: int) -> None:
        """Read and drop an oversized body (in small pieces, never held), so the client reads the 413 instead of a
        reset connection; beyond DISCARD_LIMIT the connection is closed instead."""
        if not 0 <= size <= DISCARD_LIMIT:
            self.close_connection = True
            return
        while size > 0:
            piece = self.rfile.read(min(size, 1 << 16))
            if not piece:
                break
            size -= len(piece)

    # --- responses ---------------------------------------------------------------------------------------------------

    def _login(self, token: str) -> None:
        expected = self.server.token
        if expected is None or not hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8")):
            raise HttpError(HTTPStatus.UNAUTHORIZED, "wrong token")
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", "/")
        self.send_header("Set-Cookie", f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _static(self, path: str) -> Response:
        name = "index.html" if path in ("/", "/index.html") else path.lstrip("/")
        target = STATIC_DIR / name
        if "/" in name or target.suffix not in STATIC_TYPES or not target.is_file():
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        return Response(HTTPStatus.OK, target.read_bytes(), STATIC_TYPES[target.suffix])

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self'; object-src 'none'")
        self.end_headers()
        self.wfile.write(response.body)


def make_server(config: Config, *, host: Optional[str] = None, port: Optional[int] = None) -> ReviewServer:
    """A bound, not yet serving, review server; :class:`ServeError` when it must not or cannot start."""
    from edge.review.commands import open_review

    host = host or config.review.host
    port = config.review.port if port is None else port
    token = config.review.token()
    loopback = is_loopback(host)
    if not loopback and token is None:
        raise ServeError(f"doorface serve on {host} (not loopback) needs a token: set {config.review.token_env} "
                         f"(e.g. export {config.review.token_env}=$(openssl rand -hex 16)) or review.token_file, "
                         "or bind 127.0.0.1")
    with open_review(config) as (gallery, log):  # fail now, not on the first page view
        log.purge()
        logger.info("serving gallery %s", gallery.path)
    try:
        return ReviewServer((host.strip("[]"), port), ReviewApp(config), token=token,
                            max_body=int(config.review.max_upload_mb * 1e6), loopback=loopback)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or stop "
                         "what uses it") from None


def serve(config: Config, *, host: Optional[str] = None, port: Optional[int] = None,
          ready: Optional[Callable[[ReviewServer], None]] = None) -> int:
    server = make_server(config, host=host, port=port)
    address, bound = server.server_address[:2]
    shown = f"[{address}]" if ":" in str(address) else address
    print(f"doorface: review page on http://{shown}:{bound}/ (Ctrl-C stops it)", flush=True)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
