"""Teachers: anything that continues a prompt. An OpenAI-compatible completion endpoint for real runs (vLLM's
server on GPUs, one or many behind a load balancer), or a phi-edge package run in process for CPU runs and tests.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit


class Teacher(Protocol):
    name: str

    def complete(self, prompt: str, *, max_tokens: int, temperature: float, seed: int) -> str: ...


class TeacherError(RuntimeError):
    """A request that failed: after its retries, or at once for an answer that retrying cannot change."""


MAX_REPLY_BYTES = 8 * 2**20  # a completion of a few thousand tokens is tens of KiB; more is refused, not kept


class _Retry(Exception):
    """A failure worth another attempt (connection, timeout, 5xx, 429)."""


@dataclass
class HttpTeacher:
    """POST {base_url}/completions (the OpenAI completions API, as vLLM serves it), with retries and backoff.

    The API key, if any, is read from the environment variable named by `api_key_env` (never from a file) and
    sent only to base_url's host: redirects are not followed (a 3xx is an error naming where it pointed), so the
    key never reaches another address. Each attempt has one deadline for the whole exchange (connect, headers,
    body: `timeout_s`), however slowly a server trickles bytes, and a reply larger than MAX_REPLY_BYTES or not
    shaped like a completion is refused, not kept.
    """

    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    timeout_s: float = 120.0
    retries: int = 4
    backoff_s: float = 1.0
    api_key_env: str = "OPENAI_API_KEY"

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--teacher-url {self.base_url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")

    @property
    def name(self) -> str:
        return f"{self.model} at {self.base_url}"

    def complete(self, prompt: str, *, max_tokens: int, temperature: float, seed: int) -> str:
        body = json.dumps({"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                           "temperature": temperature, "top_p": 0.95, "seed": seed}).encode()
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        url = self.base_url.rstrip("/") + "/completions"
        last = None
        for attempt in range(self.retries + 1):
            try:
                return _text_of(self._post(url, body, headers), url)
            except _Retry as e:
                last = str(e)
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2 ** attempt)
        raise TeacherError(f"the teacher at {url} failed {self.retries + 1} times ({last}); check that the server is "
                           f"up and serves model {self.model!r}")

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> bytes:
        """One attempt, within one deadline: a watchdog shuts the socket down when it passes."""
        parts = urlsplit(url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = kind(parts.hostname, parts.port, timeout=self.timeout_s)
        expired = threading.Event()
        sockets: list[socket.socket] = []  # the connection hands its socket to the response: keep our own hold

        def expire() -> None:
            expired.set()
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(self.timeout_s, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            connection.connect()  # bounded by timeout_s
            sockets.append(connection.sock)
            if expired.is_set():
                raise TimeoutError
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            if 300 <= response.status < 400:
                raise TeacherError(f"the teacher at {url} answered HTTP {response.status} (a redirect to "
                                   f"{response.getheader('Location')!r}); redirects are not followed, so the API key "
                                   f"is never sent elsewhere: pass the final address as --teacher-url")
            if response.status == 429 or response.status >= 500:
                raise _Retry(f"HTTP {response.status} {response.reason}")
            if response.status >= 400:
                raise TeacherError(f"the teacher at {url} answered HTTP {response.status} {response.reason} (not "
                                   f"retried: the request itself was refused); check --teacher-model and the key")
            data = bytearray()
            while chunk := response.read(1 << 16):
                data += chunk
                if len(data) > MAX_REPLY_BYTES:
                    raise TeacherError(f"the teacher at {url} sent a reply of more than {MAX_REPLY_BYTES >> 20} MiB; "
                                       f"it is refused (lower --max-tokens, or check the server)")
            if expired.is_set():
                raise TimeoutError
            return bytes(data)
        except (OSError, http.client.HTTPException) as e:  # TimeoutError and ConnectionError are OSErrors
            if expired.is_set() or isinstance(e, TimeoutError):
                raise _Retry(f"no complete reply within {self.timeout_s:g} s") from None
            raise _Retry(f"{type(e).__name__}: {e}") from None
        finally:
            watchdog.cancel()
            connection.close()


def _text_of(data: bytes, url: str) -> str:
    """choices[0].text of an OpenAI completion; anything else is refused (retrying would not change it)."""
    try:
        reply = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise TeacherError(f"the teacher at {url} sent a reply that is not JSON; is it an OpenAI-compatible "
                           f"completions endpoint?") from None
    choices = reply.get("choices") if isinstance(reply, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    text = first.get("text") if isinstance(first, dict) else None
    if not isinstance(text, str):
        raise TeacherError(f"the teacher at {url} sent JSON without a string choices[0].text (got "
                           f"{type(reply).__name__}); is it an OpenAI-compatible completions endpoint?")
    return text


class RuntimeTeacher:
    """A phi-edge model package run in this process (runtime.load): one request at a time."""

    def __init__(self, package: Path):
        import runtime

        self.package = Path(package)
        self.model = runtime.load(self.package)
        self.name = f"runtime package {self.package}"

    def complete(self, prompt: str, *, max_tokens: int, temperature: float, seed: int) -> str:
        from runtime.loop import GenerationConfig
        from runtime.sampling import SamplingConfig

        capacity = self.model.backend.capacity
        ids = self.model.encode(prompt)[-(capacity // 2):]  # keep room for the reply in a small context
        config = GenerationConfig(max_new_tokens=min(max_tokens, capacity - len(ids)),
                                  sampling=SamplingConfig(temperature=temperature, top_p=0.95, seed=seed))
        with self.model.exclusive():  # the requests' threads take turns on the one model
            self.model.backend.truncate(0)
            return self.model.generate_ids(ids, config).text
