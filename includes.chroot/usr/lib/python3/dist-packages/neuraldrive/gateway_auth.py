"""gateway-auth: decides, for the gateway, whether a request may reach the engine.

Caddy asks it for every /api/* and /v1/* request (forward_auth over a Unix socket, the original
method and path in X-Forwarded-Method / X-Forwarded-Uri, the client's Authorization header as
sent). 2xx lets the request through; anything else is returned to the client as it is.

- The scheme is matched without regard to case (RFC 9110 11.1); keys are compared in constant time
  (hmac.compare_digest), so answer times say nothing about how much of a guess was right.
- Routes that change the model store (create, copy, delete, push, blob uploads) need the admin
  key; the API key alone gets a 403 that says so. Pulling stays open to API key holders.
- Keys are read from their files on each request: a rotated key takes effect at once.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import socketserver
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

from .common import fail, log
from .paths import ADMIN_KEY_FILE, API_KEY_FILE

PROG = "gateway-auth"
REALM = 'Bearer realm="neuraldrive"'
# (method, path or prefix ending in "/") that change the model store.
ADMIN_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", "/api/create"), ("POST", "/api/copy"), ("DELETE", "/api/delete"), ("POST", "/api/push"),
    ("POST", "/api/blobs/"), ("HEAD", "/api/blobs/"),
)


@dataclass(frozen=True)
class Verdict:
    status: int
    message: str

    @property
    def allowed(self) -> bool:
        return self.status == 200


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header (scheme in any case), else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def needs_admin(method: str, uri: str) -> bool:
    path = urlsplit(uri).path
    # Instance routes (/i/NAME/api/...) are the same routes on another engine.
    if path.startswith("/i/"):
        path = "/" + path.split("/", 3)[-1] if path.count("/") >= 3 else path
    for route_method, route in ADMIN_ROUTES:
        if method.upper() == route_method and (path == route or (route.endswith("/") and path.startswith(route))):
            return True
    return False


def _matches(token: str, key: str | None) -> bool:
    if not key:
        return False  # an empty or missing key file never lets anyone in
    return hmac.compare_digest(token.encode(), key.encode())


def decide(method: str, uri: str, authorization: str | None, api_key: str | None,
           admin_key: str | None) -> Verdict:
    token = bearer_token(authorization)
    if token is None:
        return Verdict(401, "missing or malformed Authorization header (expected: Bearer <API key>)")
    is_admin = _matches(token, admin_key)
    is_user = _matches(token, api_key)
    if not (is_admin or is_user):
        return Verdict(401, "wrong API key")
    if needs_admin(method, uri) and not is_admin:
        return Verdict(403, f"{method.upper()} {urlsplit(uri).path} changes the model store and needs the "
                            "admin key (on the device: neuraldrive key show --admin)")
    return Verdict(200, "ok")


def read_key(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


class Handler(BaseHTTPRequestHandler):
    server_version = PROG
    sys_version = ""
    api_key_file = Path(API_KEY_FILE)
    admin_key_file = Path(ADMIN_KEY_FILE)

    def _answer(self) -> None:
        verdict = decide(self.headers.get("X-Forwarded-Method", self.command),
                         self.headers.get("X-Forwarded-Uri", self.path),
                         self.headers.get("Authorization"),
                         read_key(self.api_key_file), read_key(self.admin_key_file))
        body = b"" if verdict.allowed else json.dumps({"error": verdict.message}).encode() + b"\n"
        self.send_response(verdict.status)
        if verdict.status == 401:
            self.send_header("WWW-Authenticate", REALM)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def address_string(self) -> str:
        return "gateway"  # a Unix socket peer has no address

    def log_message(self, format: str, *args: object) -> None:
        pass  # the gateway logs every request already; no key material here either


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # The gateway may close a forward_auth connection early (its client went away): not an error.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


def serve(socket_path: Path) -> Server:
    socket_path.unlink(missing_ok=True)
    old = os.umask(0o117)  # the socket: owner and group (the gateway) only
    try:
        return Server(str(socket_path), Handler)
    finally:
        os.umask(old)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Answer the gateway's forward_auth requests on a "
                                     "Unix socket: 200, 401 (no or wrong key) or 403 (admin route).")
    parser.add_argument("--socket", type=Path, required=True, metavar="PATH")
    parser.add_argument("--api-key-file", type=Path, default=Path(API_KEY_FILE), metavar="FILE")
    parser.add_argument("--admin-key-file", type=Path, default=Path(ADMIN_KEY_FILE), metavar="FILE")
    args = parser.parse_args(argv)
    Handler.api_key_file, Handler.admin_key_file = args.api_key_file, args.admin_key_file
    try:
        server = serve(args.socket)
    except OSError as exc:
        return fail(PROG, f"cannot listen on {args.socket}: {exc.strerror or exc}")
    log(f"answering on {args.socket}")
    with server:
        server.serve_forever()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
