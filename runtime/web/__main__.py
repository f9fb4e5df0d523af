"""python -m runtime.web [--package DIR] [--port N]: serves the web runtime and one model package on 127.0.0.1.

    /            the page: index.html, style.css, js/*.js
    /vendor/     the dist files of onnxruntime-web and @huggingface/tokenizers (`npm ci` in runtime/web)
    /package/    the package: manifest.json and the files it lists (default: the demo package, runtime/demo)

Only those files are served, each looked up in a table made at start (no directory listings, no other file of
the repository). A package's files are read where they are, symlinks included, as the Python runtime reads
them: the manifest names them, and runtime.manifest checks it before the server starts.

Every response carries the headers cross-origin isolation needs (COOP same-origin, COEP require-corp), so the
page gets SharedArrayBuffer and onnxruntime-web can use several wasm threads.
"""

from __future__ import annotations

import argparse
import mimetypes
import sys
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from runtime import hub
from runtime.manifest import MANIFEST, load_manifest

WEB = Path(__file__).resolve().parent
DEMO = WEB.parent / "demo"
VENDOR = ("onnxruntime-web/dist", "@huggingface/tokenizers/dist")  # what the page's import map loads
MISSING = WEB / "__not_served__"
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream", ".data": "application/octet-stream", ".css": "text/css"}


def served_files(package: Path) -> dict[str, Path]:
    """URL path -> file: the page's own files, the vendor dist files, and the package's manifest and files."""
    table = {"/": WEB / "index.html"}
    table.update({f"/{p.relative_to(WEB).as_posix()}": p for p in [WEB / "index.html", WEB / "style.css",
                                                                   *sorted((WEB / "js").glob("*.js"))]})
    for folder in VENDOR:
        root = WEB / "node_modules" / folder
        table.update({f"/vendor/{folder}/{p.name}": p for p in sorted(root.iterdir()) if p.is_file()})
    manifest = load_manifest(package)
    for name in (MANIFEST, manifest.tokenizer["file"], *manifest.files):
        table[f"/package/{name}"] = package / name
    return table


class Handler(SimpleHTTPRequestHandler):
    def __init__(self, *args, files: dict[str, Path], **kwargs):
        self.files = files
        super().__init__(*args, directory=str(WEB), **kwargs)

    def send_head(self):
        try:
            path = unquote(urlsplit(self.path).path, errors="strict")
        except UnicodeDecodeError:
            path = "\x00"
        if "\x00" in path or "\\" in path:
            self.send_error(HTTPStatus.BAD_REQUEST, "malformed path")
            return None
        return super().send_head()

    def translate_path(self, path: str) -> str:
        """URL path -> file, only those of the table; anything else is a path that does not exist (404)."""
        return str(self.files.get(unquote(urlsplit(path).path), MISSING))

    def guess_type(self, path) -> str:
        return TYPES.get(Path(path).suffix, None) or mimetypes.guess_type(str(path))[0] or "application/octet-stream"

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # quiet unless something failed
        if args and str(args[1] if len(args) > 1 else "").startswith(("4", "5")):
            super().log_message(format, *args)


def make_server(package: Path = DEMO, port: int = 8800) -> ThreadingHTTPServer:
    if not 0 <= port <= 65535:  # the arguments first, then what the machine has
        raise ValueError(f"--port {port} is not a TCP port; pass 0..65535 (0 picks a free one)")
    package = Path(package).resolve()
    if not (package / "manifest.json").is_file():
        raise FileNotFoundError(f"{package} has no manifest.json; pass --package with a folder written by python -m export")
    if not all((WEB / "node_modules" / folder).is_dir() for folder in VENDOR):
        raise FileNotFoundError(f"{WEB / 'node_modules'} lacks onnxruntime-web or @huggingface/tokenizers; run "
                                f"`npm ci` in {WEB} first")
    return ThreadingHTTPServer(("127.0.0.1", port), partial(Handler, files=served_files(package)))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m runtime.web", description=__doc__.splitlines()[0])
    parser.add_argument("--package", "--model", dest="package", default=str(DEMO),
                        help="model package folder or Hugging Face id ORG/NAME[@REVISION] (default: the demo)")
    parser.add_argument("--port", type=int, default=8800, help="0 picks a free port (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port {args.port} is not a TCP port; pass 0..65535 (0 picks a free one)")
        server = make_server(hub.resolve(args.package), args.port)
    except (OSError, ValueError, ImportError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"serving http://127.0.0.1:{server.server_address[1]}/ (package {args.package})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
