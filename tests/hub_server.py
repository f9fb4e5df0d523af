"""A Hugging Face Hub of our own on 127.0.0.1 for tests: the endpoints huggingface_hub's downloads use.

    GET  /api/models/ORG/NAME[/revision/REV]     repository info: the commit sha and the files (siblings)
    HEAD /ORG/NAME/resolve/REV/PATH               a file's metadata: X-Repo-Commit, ETag, Content-Length
    GET  /ORG/NAME/resolve/REV/PATH               the file (Range: bytes=N- answers 206 from N)

Repositories are folders of files served as one commit. Errors answer as the Hub does (X-Error-Code: RepoNotFound,
RevisionNotFound, EntryNotFound, GatedRepo). `requests` records every request (method, path, Range); `faults` makes
a file misbehave on purpose: "cut" (the next GET) sends all but its last MiB and closes the connection, "lie"
(until removed) has its metadata announce 1000 bytes more than the file holds.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    revisions: tuple[str, ...] = ("main",)
    gated: bool = False

    @classmethod
    def from_folder(cls, folder: Path, **kwargs) -> Repo:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return cls(files, **kwargs)


@dataclass
class FakeHub:
    repos: dict[str, Repo]
    requests: list[str] = field(default_factory=list)
    faults: dict[str, str] = field(default_factory=dict)  # file path -> "cut" | "lie", once

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(head=True)

            def do_GET(self) -> None:
                self.answer(head=False)

            def fail(self, status: int, code: str) -> None:
                body = json.dumps({"error": code}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def answer(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                ranged = self.headers.get("Range", "")
                hub.requests.append(f"{self.command} {path}" + (f" {ranged}" if ranged else ""))
                parts = path.strip("/").split("/")
                api = parts[:2] == ["api", "models"]
                if api:
                    parts = parts[2:]
                repo_id = "/".join(parts[:2])
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self.fail(HTTPStatus.UNAUTHORIZED, "RepoNotFound")  # as the Hub answers anonymous callers
                if repo.gated and "authorization" not in {k.lower() for k in self.headers}:
                    return self.fail(HTTPStatus.FORBIDDEN, "GatedRepo")
                if api:
                    revision = parts[3] if len(parts) > 3 and parts[2] in ("revision", "tree") else "main"
                    if revision not in (*repo.revisions, repo.sha):
                        return self.fail(HTTPStatus.NOT_FOUND, "RevisionNotFound")
                    if len(parts) > 2 and parts[2] == "tree":  # the file list, one page, recursive
                        under = "/".join(parts[4:])
                        listed = [{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                                  for f, d in repo.files.items() if not under or f.startswith(under + "/")]
                        body = json.dumps(listed).encode()
                    else:
                        body = json.dumps({"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                                           "gated": repo.gated,
                                           "siblings": [{"rfilename": f} for f in repo.files]}).encode()
                    self.send_response(HTTPStatus.OK)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(body)
                    return
                if len(parts) < 5 or parts[2] != "resolve":
                    return self.fail(HTTPStatus.NOT_FOUND, "EntryNotFound")
                revision, name = parts[3], "/".join(parts[4:])
                if revision not in (*repo.revisions, repo.sha):
                    return self.fail(HTTPStatus.NOT_FOUND, "RevisionNotFound")
                if name not in repo.files:
                    return self.fail(HTTPStatus.NOT_FOUND, "EntryNotFound")
                data = repo.files[name]
                start = 0
                if ranged.startswith("bytes=") and not head:
                    start = int(ranged[6:].split("-")[0] or 0)
                lie = hub.faults.get(name) == "lie"
                fault = hub.faults.pop(name, None) if not head and hub.faults.get(name) == "cut" else None
                self.send_response(HTTPStatus.PARTIAL_CONTENT if start else HTTPStatus.OK)
                self.send_header("X-Repo-Commit", repo.sha)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Type", "application/octet-stream")
                body = data[start:]
                self.send_header("Content-Length", str(len(body) + (1000 if lie and head else 0)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if head:
                    return
                if fault == "cut":
                    self.wfile.write(body[:max(len(body) - (1 << 20), 0)])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
