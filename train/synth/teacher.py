"""Teachers: anything that continues a prompt. An OpenAI-compatible completion endpoint for real runs (vLLM's
server on GPUs, one or many behind a load balancer), or a phi-edge package run in process for CPU runs and tests.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class Teacher(Protocol):
    name: str

    def complete(self, prompt: str, *, max_tokens: int, temperature: float, seed: int) -> str: ...


class TeacherError(RuntimeError):
    """A request that still failed after its retries."""


@dataclass
class HttpTeacher:
    """POST {base_url}/completions (the OpenAI completions API, as vLLM serves it), with retries and backoff.

    The API key, if any, is read from the environment variable named by `api_key_env` (never from a file).
    """

    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    timeout_s: float = 120.0
    retries: int = 4
    backoff_s: float = 1.0
    api_key_env: str = "OPENAI_API_KEY"

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
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    reply = json.loads(response.read())
                return reply["choices"][0]["text"]
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}"
                if e.code < 500 and e.code != 429:  # a bad request will not get better
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError, KeyError,
                    IndexError) as e:
                last = f"{type(e).__name__}: {e}"
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2 ** attempt)
        raise TeacherError(f"the teacher at {url} failed ({last}) after {self.retries} retries; check that the "
                           f"server is up and serves model {self.model!r}")


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
