"""The artifact HTTP server of a test or bench run: exactly the named files on 127.0.0.1, nothing else."""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar


class _FileMapHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD /NAME for exactly the names in `files`; 404 for every other path."""

    files: ClassVar[dict[str, Path]] = {}

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, with_body: bool) -> None:
        path = self.files.get(self.path)
        if path is None:
            self.send_error(404)
            return
        with path.open("rb") as stream:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(os.fstat(stream.fileno()).st_size))
            self.end_headers()
            if with_body:
                shutil.copyfileobj(stream, self.wfile)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_files(files: dict[str, Path]) -> Iterator[str]:
    """Serve exactly `files` (URL name -> file) on 127.0.0.1 (a random port) for the build's
    artifact fetch: never the directory they sit in (a temp dir, the user's downloads, …)."""
    for name in files:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"serve_files: {name!r} is not a plain file name")
    handler = type("FileMap", (_FileMapHandler,), {"files": {f"/{n}": Path(p) for n, p in files.items()}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
