"""Writes android_demo/golden/: what the Kotlin engine must reproduce exactly, taken from the Python runtime.

    python android_demo/make_golden.py            # from the repository root; rewrites android_demo/golden/

Files (the Kotlin host tests in android_demo/engine/src/test read them):

    tokenizer_demo.json        encode/decode cases for runtime/demo/tokenizer.json
    tokenizer_codegen.json.gz  the demo tokenizer plus CodeGen-style added tokens for runs of 2..32 spaces and
                               2..10 tabs (phi-1/phi-2's tokenizer has the same kind), built with `tokenizers`
    tokenizer_codegen.json     encode/decode cases for it
    tokenizer_llama.json.gz    Phi-3's kind: SentencePiece-style BPE with byte fallback (tests/phi3_fixtures.py)
    tokenizer_llama.json       encode/decode cases for it
    tokenizer_gpt4o.json.gz    Phi-4-mini's kind: byte-level BPE after GPT-4o's Split regex
    tokenizer_gpt4o.json       encode/decode cases for it
    chat_templates.json        the chat parts export/chat_template.py takes from Phi-3's and Phi-4-mini's Jinja
                               templates, and conversations rendered with them by runtime.pipeline.apply_template
    generation.json            generation cases: prompt ids, config, every backend step (ids fed, cache length
                               before it, and "rows" for a verify step that returned one per id) and the Python
                               runtime's tokens, text and finish reason
    logits.f16.gz              the logits row each step returned, float16 little-endian, (steps, vocab)
    sampling.json              runtime.sampling.probabilities (kept ids, most likely first, and their
                               probabilities) for some of those rows under several sampling settings

How the logits are made exact: the demo package is run once through runtime.engine.OrtBackend, recording every
step's logits; they are rounded to float16 (to keep the files small) and the SAME runtime code
(runtime.loop.generate_ids, runtime.chat.ChatSession) is run again over a replaying backend that returns the
rounded rows. The expected tokens and text are that replay's, so Kotlin and Python decide on identical float32
numbers; the script also checks that the replay picks the tokens the live ONNX Runtime run picked.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import runtime  # noqa: E402
from runtime.engine import EngineOptions  # noqa: E402
from runtime.loop import GenerationConfig  # noqa: E402
from runtime.pipeline import TextGenerator, apply_template  # noqa: E402
from runtime.sampling import SamplingConfig  # noqa: E402

OUT = Path(__file__).resolve().parent / "golden"
PACKAGE = ROOT / "runtime" / "demo"

HARD_STRINGS = [
    "", " ", "  ", "\t", "\t\t", "\n", "\n\n", "   \n", "a  b", "a \t b", "  leading", "trailing  ",
    "def add(a, b):\n    return a + b\n", "\tif x:\n\t\treturn 1\n\telse:\n\t\treturn 2\n",
    "class Foo(Bar):\n        pass\n\n\n# comment   \n", "x = {'k': [1, 2.5, -3e10]}  # dict",
    "don't you'll we've I'm she'd they're it's", "HELLO WORLD 12345 67890",
    "héllo wörld, naïve café", "Привет, мир!", "日本語のテキスト", "한국어 텍스트", "مرحبا بالعالم",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷", "math ∑ ∫ √ ≠ ≤ ∞", "zero\u200bwidth\u00a0nbsp",
    "<|endoftext|>", "a<|endoftext|>b", "print('<|endoftext|>')", "    <|endoftext|>   ",
    "mixed \t \t  tabs\t\t\tand    spaces" + " " * 40 + "end", "\r\nwindows\r\n", "1 2  3   4    5",
    "Alice: hi\nBob: hello\nAlice: how are you?\nBob:", "Question: what is 2+2?\nAnswer:",
    "lambda x: x ** 2  # square\n\n\ndef main():\n\tpass", "\u00ff\u0100\u0fff\uffff", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝓂𝒶𝓉𝒽",
]
# Token id lists that end inside a multibyte character or hold the special token: decode must give
# U+FFFD for incomplete characters and drop special tokens, as tokenizers' decode() does by default.
MAX_SPACES, MAX_TABS = 32, 10


def write_gzip(path: Path, data: bytes) -> None:
    """gzip with no timestamp, so unchanged vectors rewrite to identical bytes."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(data)


def codegen_tokenizer(base: Path):
    """The demo tokenizer plus CodeGen's whitespace added tokens (runs of spaces and tabs, not special)."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(base))
    runs = [" " * n for n in range(MAX_SPACES, 1, -1)] + ["\t" * n for n in range(MAX_TABS, 1, -1)]
    tok.add_tokens([AddedToken(r, normalized=True, special=False, lstrip=False, rstrip=False) for r in runs])
    return tok


def tokenizer_cases(tok) -> dict:
    cases = []
    for text in HARD_STRINGS:
        ids = tok.encode(text).ids
        cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids)})
    decodes = []
    for text in ["😀 ok", "日本", "é", "👨‍👩‍👧"]:
        ids = tok.encode(text).ids
        for n in range(1, len(ids) + 1):  # every prefix: some end mid-character
            decodes.append({"ids": ids[:n], "decoded": tok.decode(ids[:n])})
    for ids in ([0], [0, 5, 0], [5, 0, 6]):
        decodes.append({"ids": ids, "decoded": tok.decode(ids)})
    return {"encode": cases, "decode": decodes}


def pad(rows: np.ndarray, extra: int) -> np.ndarray:
    """Logits rows (..., vocab) with `extra` padded rows appended, each 8 above the row's largest logit: a padded
    vocabulary (phi-2: 51200 rows for 50295 tokens) whose empty rows would win unless they are never sampled."""
    if not extra:
        return rows
    top = rows.max(axis=-1, keepdims=True) + np.float32(8)
    return np.concatenate([rows, np.repeat(top, extra, axis=-1)], axis=-1).astype(np.float32)


class Recorder:
    """Wraps a backend; logs every step (ids, cache length before it, logits row) and pads rows (`pad_rows`)."""

    def __init__(self, inner, pad_rows: int = 0):
        self.inner, self.steps, self.rows, self.pad_rows = inner, [], [], pad_rows

    vocab_size = property(lambda self: self.inner.vocab_size + self.pad_rows)
    capacity = property(lambda self: self.inner.capacity)
    length = property(lambda self: self.inner.length)
    can_step_all = property(lambda self: self.inner.can_step_all)

    def truncate(self, n: int) -> None:  # each step's "past" checks the truncations before it
        self.inner.truncate(n)

    def step(self, ids):
        self.steps.append({"ids": [int(i) for i in ids], "past": self.inner.length})
        logits = self.inner.step(ids)
        self.rows.append(np.asarray(logits, np.float32).copy())
        return pad(logits, self.pad_rows)

    def step_all(self, ids, keep=None):
        keep = len(ids) if keep is None else keep
        self.steps.append({"ids": [int(i) for i in ids], "past": self.inner.length, "rows": keep})
        rows = self.inner.step_all(ids, keep=keep)
        self.rows += [np.asarray(r, np.float32).copy() for r in rows]
        return pad(rows, self.pad_rows)


class Replay:
    """Returns recorded rows (padded as recorded) in order and checks it is fed what the recording was fed."""

    can_step_all = True

    def __init__(self, steps, rows, vocab_size: int, capacity: int, pad_rows: int = 0):
        self.steps, self.rows, self.i, self.row, self.pad_rows = steps, rows, 0, 0, pad_rows
        self.vocab_size, self.capacity, self.length = vocab_size + pad_rows, capacity, 0

    def _check(self, got: dict) -> None:
        want = self.steps[self.i]
        assert got == want, f"replay step {self.i}: {got}, recorded {want}"
        self.i += 1

    def truncate(self, n: int) -> None:
        assert 0 <= n <= self.length
        self.length = n

    def step_all(self, ids, keep: int | None = None, plain: bool = False):
        n = 1 if plain else len(ids) if keep is None else keep
        self._check({"ids": [int(i) for i in ids], "past": self.length, **({} if plain else {"rows": n})})
        self.length += len(ids)
        self.row += n
        return pad(np.stack(self.rows[self.row - n:self.row]).astype(np.float32), self.pad_rows)

    def step(self, ids):
        return self.step_all(ids, plain=True)[-1]


def config_json(config: GenerationConfig) -> dict:
    s = config.sampling
    return {"max_new_tokens": config.max_new_tokens, "stop": list(config.stop), "stop_at_eos": config.stop_at_eos,
            "prefill_chunk": config.prefill_chunk, "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
            "seed": s.seed, "repetition_penalty": s.repetition_penalty, "draft": config.draft,
            "draft_tokens": config.draft_tokens, "draft_cost": config.draft_cost}


def greedy(**kw) -> GenerationConfig:
    sampling = SamplingConfig(temperature=0.0, top_p=1.0, seed=0,
                              **{k: kw.pop(k) for k in ("repetition_penalty",) if k in kw})
    return GenerationConfig(sampling=sampling, **kw)


def case_model(live: TextGenerator, backend, case: dict) -> TextGenerator:
    """A TextGenerator over `backend` with the case's manifest changes (a LongRoPE switch, a sliding window on the demo
    package)."""
    manifest = live.manifest
    if case.get("rope_switch"):
        manifest = dataclasses.replace(manifest, rope_switch=case["rope_switch"])
    if case.get("window"):
        manifest = dataclasses.replace(manifest, contract=dataclasses.replace(manifest.contract, window=case["window"]))
    return TextGenerator(manifest, backend, load_s=None)


def run_case(model: TextGenerator, case: dict) -> list:
    """Runs one case on `model`; returns the Generation of each call."""
    if case["kind"] == "generate":
        return [model.generate(case["prompt"], case["config"], template=case["template"])]
    from tests.phi3_fixtures import CancelAfter

    session = model.chat(case["template"], drop_oldest=case.get("drop_oldest", False))
    cancel = case.get("cancel") or {}
    return [session.send(user, case["config"], cancel=CancelAfter(cancel["after"]) if cancel.get("turn") == i else None)
            for i, user in enumerate(case["turns"])]


PHI3_STRINGS = HARD_STRINGS + ["<|user|>\nHi<|end|>\n<|assistant|>\n", "<|user|>Hi<|end|><|assistant|>",
                                "a<|end|>b <|system|> c", "  <|user|>  spaced  ", "\u2581already\u2581marked"]


# Phi-3.5-mini's template: a system block only when the message has content; and a template that trims each message
# (Jinja's `| trim`: Python's str.strip(), whose whitespace differs from Kotlin's and JavaScript's trim()).
PHI35_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + "
    "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + "
    "'<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}"
    "{{ eos_token }}{% endif %}")
TRIM_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}<sys>{{ m['content'] | trim }}</sys>{% elif m['role'] == "
    "'user' %}<u>{{ m['content'] | trim }}</u>{% else %}<a>{{ m['content'] }}</a>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<a>{% endif %}")
WHITESPACE = " \t\n\x0b\x1c\x85\xa0\u2007\u3000\ufeff"  # U+FEFF is not Python whitespace: it stays


def write_phi3_goldens() -> None:
    """Phi-3 and Phi-4-mini tokenizers and chat templates (built as tests/phi3_fixtures.py builds them)."""
    import tempfile

    from export.chat_template import chat_parts
    from runtime.manifest import Manifest
    from runtime.pipeline import apply_template
    from tests.phi3_fixtures import KINDS
    from tokenizers import Tokenizer

    templates = {}
    chat_templates = {kind: (template, bos) for kind, (_, template, bos) in KINDS.items()}
    chat_templates.update({"phi35": (PHI35_CHAT_TEMPLATE, "<s>"), "trim": (TRIM_CHAT_TEMPLATE, "")})
    for kind, (build, template, bos) in sorted(KINDS.items()):
        with tempfile.TemporaryDirectory() as tmp:
            tok = Tokenizer.from_file(str(build(Path(tmp) / "tokenizer.json")))
        write_gzip(OUT / f"tokenizer_{kind}.json.gz", tok.to_str().encode("utf-8"))
        cases = tokenizer_cases(tok)
        for text in PHI3_STRINGS[len(HARD_STRINGS):]:
            ids = tok.encode(text).ids
            cases["encode"].append({"text": text, "ids": ids, "decoded": tok.decode(ids)})
        (OUT / f"tokenizer_{kind}.json").write_text(json.dumps(cases, ensure_ascii=False, indent=0))
    for kind, (template, bos) in sorted(chat_templates.items()):
        parts = {**chat_parts(template, {"bos_token": bos, "eos_token": "<|endoftext|>"}), "stop": []}
        manifest = Manifest(Path("."), {}, None, 2, {}, {}, {"chat": parts}, {}, {})
        rendered = []
        for system, turns, user in [(None, [], "Hello!"), ("Be brief.", [("Hi", "Hello.")], "2+2? {prompt}"),
                                    ("", [], "Hi"), (WHITESPACE + "sys" + WHITESPACE, [(WHITESPACE + "a\tb\n", " r ")],
                                                     "\u3000x\u2028")]:
            text = apply_template(manifest, "chat", turns[0][0] if turns else user, system=system)
            for i, (_, reply) in enumerate(turns):
                nxt = turns[i + 1][0] if i + 1 < len(turns) else user
                text += reply + apply_template(manifest, "chat", nxt, "turn")
            rendered.append({"system": system, "turns": [list(t) for t in turns], "user": user, "text": text})
        templates[kind] = {"parts": parts, "conversations": rendered}
    (OUT / "chat_templates.json").write_text(json.dumps(templates, ensure_ascii=False, indent=1))


SAMPLING_CASES = [SamplingConfig(), SamplingConfig(temperature=1.0, top_k=40, top_p=0.9),
                  SamplingConfig(temperature=0.3, top_p=0.5), SamplingConfig(temperature=1.5, top_k=1),
                  SamplingConfig(temperature=2.0, top_p=0.999), SamplingConfig(temperature=1.2, top_k=300, top_p=1.0)]


def sampling_cases(rows: list[np.ndarray]) -> list[dict]:
    """probabilities() on a few recorded rows (float16 values, as the Kotlin test reads them back)."""
    from runtime.sampling import probabilities

    out = []
    for r in range(0, len(rows), max(1, len(rows) // 5)):
        for config in SAMPLING_CASES[:None if r == 0 else -2]:  # the wide settings keep most ids: row 0 only
            ids, probs = probabilities(rows[r].astype(np.float32), config)
            out.append({"row": r, "temperature": config.temperature, "top_k": config.top_k, "top_p": config.top_p,
                        "ids": ids.tolist(), "probs": probs.tolist()})
    return out


LIMIT_VALUES = [0.0, 5e-324, 1e-300, 1e-50, 1e-45, 1e-39, 1.1754943508222875e-38, 1e-30, 0.7, 1.0,
                3.4028234663852886e38,
                3.5e38, 1e300, float("inf"), float("nan"), -1.0]


def number_json(x: float):
    """A float as JSON, with infinities and NaN as the strings "inf", "-inf", "nan" (JSON has no such numbers)."""
    return x if np.isfinite(x) else str(x)


def sampling_limits() -> list[dict]:
    """Which extreme settings the Python runtime refuses (SamplingConfig) and which it accepts: the other engines
    must refuse exactly the same."""
    out = []
    for value in LIMIT_VALUES:
        for field, base in (("temperature", 0.7), ("top_p", 0.95), ("repetition_penalty", 1.0)):
            settings = {"temperature": 0.7, "top_k": 0, "top_p": 0.95, "repetition_penalty": 1.0, field: value}
            try:
                SamplingConfig(**settings)
                refused = False
            except ValueError:
                refused = True
            out.append({**{k: number_json(v) for k, v in settings.items()}, "refused": refused})
    return out


def kv_cache_cases() -> dict:
    """The cache growth policy (runtime/kvcache.py grown_capacity) on random sequences of steps, what each KV
    dtype costs per position at Phi-3-mini's and Phi-4-mini's shapes (runtime/contract.py), and the tokens a run
    may append (step_rows)."""
    from runtime.contract import KV_DTYPES, Contract
    from runtime.kvcache import grown_capacity, step_rows, window_buffer

    rng = np.random.default_rng(7)
    growth = []
    for _ in range(40):
        limit, allocated, length = int(rng.integers(1, 5000)), 0, 0
        while True:
            needed = length + int(rng.integers(1, 400))
            if needed > limit:
                growth.append([allocated, needed, limit, None])  # refused
                break
            grown = grown_capacity(allocated, needed, limit)
            growth.append([allocated, needed, limit, grown])  # [allocated, needed, limit, positions to allocate]
            allocated, length = grown, needed
    shapes = {"phi-3-mini": (32, 32, 96), "phi-4-mini": (32, 8, 128)}
    contracts = [{"model": name, "kv_dtype": kv, "n_layers": n, "kv_heads": h, "head_dim": d,
                  "storage": (c := Contract(n, h, d, 32064, kv)).kv_storage, "width": c.kv_width,
                  "bytes_per_position": c.kv_bytes_per_token}
                 for name, (n, h, d) in shapes.items() for kv in KV_DTYPES]
    rows = [[heads, capacity, step_rows(heads, capacity)] for heads in (1, 8, 24, 32, 40)
            for capacity in (1, 64, 256, 1000, 4096, 16384, 131072)]  # [query heads, capacity, tokens per run]
    buffers = [[window, context, window_buffer(window, context)] for window in (1, 24, 2047, 4096)
               for context in (1, 64, 512, 2047, 2303, 4096, 131072)]  # [window, context, buffer positions]
    return {"growth": growth, "contracts": contracts, "step_rows": rows, "window_buffer": buffers}


def main(argv: list[str] | None = None) -> int:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT, help="folder to write (default: android_demo/golden)")
    OUT = parser.parse_args(argv).out
    OUT.mkdir(parents=True, exist_ok=True)
    tokenizer_path = PACKAGE / "tokenizer.json"
    from tokenizers import Tokenizer

    demo_tok = Tokenizer.from_file(str(tokenizer_path))
    (OUT / "tokenizer_demo.json").write_text(json.dumps(tokenizer_cases(demo_tok), ensure_ascii=False, indent=0))
    cg = codegen_tokenizer(tokenizer_path)
    write_gzip(OUT / "tokenizer_codegen.json.gz", cg.to_str().encode("utf-8"))
    (OUT / "tokenizer_codegen.json").write_text(json.dumps(tokenizer_cases(cg), ensure_ascii=False, indent=0))

    write_phi3_goldens()

    live = runtime.load(PACKAGE)
    # Find a stop string that spans a token boundary in the greedy continuation of the stop prompt.
    probe = live.generate("def fibonacci(n):", greedy(max_new_tokens=24, stop_at_eos=False))
    pieces = [live.decode([t]) for t in probe.tokens]
    at = next(i for i in range(2, len(pieces)) if len(pieces[i - 1]) >= 2 and len(pieces[i]) >= 2)
    stop = pieces[at - 1][-2:] + pieces[at][:2]  # two characters of one token, two of the next
    cases = [
        {"name": "greedy", "kind": "generate", "template": "completion", "prompt": "def fibonacci(n):",
         "config": greedy(max_new_tokens=32, stop_at_eos=False)},
        {"name": "top_k_1", "kind": "generate", "template": "completion", "prompt": "def fibonacci(n):",
         "config": GenerationConfig(max_new_tokens=32, stop_at_eos=False,
                                    sampling=SamplingConfig(temperature=0.8, top_k=1, top_p=0.95, seed=1234))},
        {"name": "repetition_penalty", "kind": "generate", "template": "code", "prompt": "import os\n\ndef ",
         "config": greedy(max_new_tokens=24, repetition_penalty=1.3, prefill_chunk=3)},
        {"name": "stop_split", "kind": "generate", "template": "completion", "prompt": "def fibonacci(n):",
         "config": greedy(max_new_tokens=32, stop=(stop,), stop_at_eos=False)},
        {"name": "draft_greedy", "kind": "generate", "template": "completion",  # verify steps and truncations
         "prompt": "import os\nimport sys\n\ndef main():\n    args = sys.argv\n\ndef main2():\n",
         "config": greedy(max_new_tokens=48, stop_at_eos=False, draft="ngram", draft_tokens=4, draft_cost=0.25)},
        {"name": "draft_costly", "kind": "generate", "template": "completion",  # drafts that do not pay: plain
         "prompt": "import os\nimport sys\n\ndef main():\n    args = sys.argv\n\ndef main2():\n",  # steps, pauses
         "config": greedy(max_new_tokens=48, stop_at_eos=False, draft="ngram", draft_tokens=4, draft_cost=0.9)},
        {"name": "draft_chat", "kind": "chat", "template": "chat",
         "turns": ["def add(a, b):", "Now the same for subtraction."],
         "config": greedy(max_new_tokens=32, draft="ngram", draft_tokens=3, draft_cost=0.1)},
        {"name": "chat_two_turns", "kind": "chat", "template": "chat",
         "turns": ["Hello! How are you?", "Write a function that adds two numbers."],
         "config": greedy(max_new_tokens=24)},
        {"name": "chat_stop_pending", "kind": "chat", "template": "chat",  # turn 1 ends mid-token: pending text
         "turns": ["Hello! How are you?", "And then?"], "config": greedy(max_new_tokens=20, stop=("tk.c",))},
        # LongRoPE's switch (runtime/longrope.py), set on the demo package: the step that crosses it feeds the
        # whole sequence again; verify steps stop short of it; a cancelled chat turn that crossed it is truncated
        # back below it, and the next turn feeds the kept conversation again with its own tokens.
        {"name": "longrope_cross", "kind": "generate", "template": "completion", "prompt": "def fibonacci(n):",
         "rope_switch": 16, "config": greedy(max_new_tokens=24, stop_at_eos=False)},
        {"name": "longrope_draft", "kind": "generate", "template": "completion", "rope_switch": 24,
         "prompt": "import os\nimport sys\n\ndef main():\n    args = sys.argv\n\ndef main2():\n",
         "config": greedy(max_new_tokens=40, stop_at_eos=False, draft="ngram", draft_tokens=4, draft_cost=0.0)},
        {"name": "longrope_chat_cancel", "kind": "chat", "template": "chat", "rope_switch": 48,
         "turns": ["Hello!", "Write a function that adds two numbers.", "And then?"],
         "cancel": {"turn": 1, "after": 12}, "config": greedy(max_new_tokens=20)},
        # A sliding window of 24 set on the demo package (runtime/recompute.py): its buffer holds 24 + 256 positions
        # and evicts 257 rows at 281 tokens; verify steps stop short of the eviction, and a cancelled chat turn that
        # crossed it is fed again (the rows it truncates back to were shifted away).
        {"name": "window_draft", "kind": "generate", "template": "completion", "window": 24,
         "prompt": "import os\nimport sys\n\ndef main():\n    args = sys.argv\n\ndef main2():\n" * 11,
         "config": greedy(max_new_tokens=40, stop_at_eos=False, draft="ngram", draft_tokens=4, draft_cost=0.25)},
        {"name": "window_chat_cancel", "kind": "chat", "template": "chat", "window": 24,
         "turns": ["Hello!", "def read_config(path):\n    with open(path) as f:\n        return f.read()\n\n" * 10,
                   "And then?"], "cancel": {"turn": 1, "after": 10}, "config": greedy(max_new_tokens=16)},
        # A padded vocabulary: 40 embedding rows with no token, each 8 above the best logit, are never sampled.
        {"name": "padded_vocab", "kind": "generate", "template": "completion", "prompt": "import os\n", "pad_rows": 40,
         "config": greedy(max_new_tokens=16, stop_at_eos=False)},
        # A full context with drop_oldest: the fewest oldest turns are dropped. The third turn leaves no room for
        # a reply of max_new_tokens whatever is dropped, so it keeps every turn that fits (all of them here).
        {"name": "drop_oldest", "kind": "chat", "template": "chat", "drop_oldest": True, "capacity": 64,
         "turns": ["Hi", "Hello", "Please write a Python function that reads a file, counts the words in it, and "
                   "prints the most common ones.", "Thanks!"], "config": greedy(max_new_tokens=40, stop=("\n",))},
        # A first turn that exactly fills the context is accepted: one token, then "context".
        {"name": "exact_fill", "kind": "chat", "template": "chat", "turns": ["Write a function that adds numbers."],
         "capacity": len(live.encode(apply_template(live.manifest, "chat", "Write a function that adds numbers."))),
         "config": greedy(max_new_tokens=8)},
    ]
    out_cases, all_rows = [], []
    vocab = live.backend.vocab_size
    for case in cases:
        source = live if not case.get("capacity") else runtime.load(PACKAGE, EngineOptions(context=case["capacity"]))
        recorder = Recorder(source.backend, case.get("pad_rows", 0))
        model = case_model(live, recorder, case)
        want = run_case(model, case)
        rows16 = [r.astype(np.float16) for r in recorder.rows]
        replay = Replay(recorder.steps, rows16, vocab, source.backend.capacity, case.get("pad_rows", 0))
        got = run_case(case_model(live, replay, case), case)
        assert replay.i == len(recorder.steps), f"{case['name']}: replay used {replay.i} of {len(recorder.steps)}"
        assert replay.row == len(rows16)
        for w, g in zip(want, got):
            if w.tokens != g.tokens:
                raise SystemExit(f"{case['name']}: float16 logits change the tokens ({w.tokens} vs {g.tokens}); "
                                 f"store float32 rows instead")
        calls = [{"tokens": g.tokens, "text": g.text, "finish_reason": g.finish_reason} for g in got]
        entry = {k: v for k, v in case.items() if k != "config"}
        entry.update(config=config_json(case["config"]), first_row=len(all_rows), steps=recorder.steps, calls=calls)
        if case["kind"] == "generate":
            entry["prompt_ids"] = model.encode(case["prompt"])
        out_cases.append(entry)
        all_rows += rows16
    (OUT / "kv_cache.json").write_text(json.dumps(kv_cache_cases()))
    logits = np.stack(all_rows).astype("<f2")  # (steps, vocab)
    write_gzip(OUT / "logits.f16.gz", logits.tobytes())
    (OUT / "sampling.json").write_text(json.dumps({"cases": sampling_cases(all_rows), "limits": sampling_limits()}))
    meta = {"package": "runtime/demo", "vocab_size": vocab, "eos_token_id": live.eos_token_id,
            "capacity": live.backend.capacity, "rows": len(all_rows), "stop_probe": stop, "cases": out_cases}
    (OUT / "generation.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))
    n_tok = sum(len(t["encode"]) + len(t["decode"]) for t in (tokenizer_cases(demo_tok), tokenizer_cases(cg)))
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT}: {n_tok} tokenizer cases, {len(out_cases)} generation cases, {len(all_rows)} logits rows, "
          f"{size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
