"""A stand-in for the Hugging Face hub on 127.0.0.1: the two requests huggingface_hub makes to
download a file (HEAD for its metadata, GET with an optional Range), for `router pull` tests
through `HF_ENDPOINT`. It can cut a transfer half-way, or serve bytes that differ from the
SHA-256 it announces."""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMMIT = "c0ffee" + "0" * 34


class FakeHub:
    def __init__(self, repo: str, filename: str, content: bytes) -> None:
        self.repo, self.filename, self.content = repo, filename, content
        self.sha256 = hashlib.sha256(content).hexdigest()
        self.cut_next_at: int | None = None  # the next GET stops after this many bytes
        self.corrupt = False  # serve other bytes of the same size
        self.ranges: list[str | None] = []  # the Range header of each GET
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self
        path = re.compile(rf"^/{re.escape(hub.repo)}/resolve/[^/]+/{re.escape(hub.filename)}$")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _found(self) -> bool:
                if path.match(self.path.split("?")[0]):
                    return True
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False

            def _meta(self) -> None:
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Etag", f'"{hub.sha256}"')
                self.send_header("X-Linked-Size", str(len(hub.content)))
                self.send_header("Accept-Ranges", "bytes")

            def do_HEAD(self) -> None:
                if not self._found():
                    return
                self.send_response(200)
                self._meta()
                self.send_header("Content-Length", str(len(hub.content)))
                self.end_headers()

            def do_GET(self) -> None:
                if not self._found():
                    return
                body = bytes(len(hub.content)) if hub.corrupt else hub.content
                wanted = self.headers.get("Range")
                hub.ranges.append(wanted)
                start = 0
                if wanted and (m := re.match(r"bytes=(\d+)-$", wanted)):
                    start = int(m.group(1))
                part = body[start:]
                self.send_response(206 if start else 200)
                self._meta()
                self.send_header("Content-Length", str(len(part)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                cut, hub.cut_next_at = hub.cut_next_at, None
                if cut is not None:
                    self.wfile.write(part[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(part)

        return Handler
