"""python -m runtime.web [--package DIR] [--port N]: serves the web runtime and one model package on 127.0.0.1.

    /            runtime/web/ (index.html, js/, style.css)
    /vendor/     runtime/web/node_modules/ (onnxruntime-web, @huggingface/tokenizers: `npm ci` in runtime/web)
    /package/    the package folder (default: the demo package, runtime/demo)

Every response carries the headers cross-origin isolation needs (COOP same-origin, COEP require-corp), so the
page gets SharedArrayBuffer and onnxruntime-web can use several wasm threads.
"""

from __future__ import annotations

import argparse
import mimetypes
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

WEB = Path(__file__).resolve().parent
DEMO = WEB.parent / "demo"
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream", ".data": "application/octet-stream", ".css": "text/css"}


class Handler(SimpleHTTPRequestHandler):
    def __init__(self, *args, package: Path, **kwargs):
        self.package = package
        super().__init__(*args, directory=str(WEB), **kwargs)

    def translate_path(self, path: str) -> str:
        """URL path -> file, only inside the three roots (no '..' escapes)."""
        path = unquote(urlsplit(path).path)
        for prefix, root in (("/package/", self.package), ("/vendor/", WEB / "node_modules"), ("/", WEB)):
            if path.startswith(prefix):
                target = (root / path[len(prefix):]).resolve()
                if target == root.resolve() or root.resolve() in target.parents:
                    return str(target)
                return str(WEB / "__outside__")
        return str(WEB / "__outside__")

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
    package = Path(package).resolve()
    if not (package / "manifest.json").is_file():
        raise FileNotFoundError(f"{package} has no manifest.json; pass --package with a folder written by python -m export")
    if not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        raise FileNotFoundError(f"{WEB / 'node_modules'} lacks onnxruntime-web; run `npm ci` in {WEB} first")
    return ThreadingHTTPServer(("127.0.0.1", port), partial(Handler, package=package))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.web", description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=DEMO, help="model package folder (default: the demo)")
    parser.add_argument("--port", type=int, default=8800, help="0 picks a free port (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        server = make_server(args.package, args.port)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
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
