"""runtime/: greedy decoding against PyTorch, chat cache reuse, sampling, text streaming, the loop."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime import stats
from runtime.chat import ContextFullError
from runtime.engine import EngineOptions, OrtBackend
from runtime.loop import GenerationConfig, generate_ids
from runtime.manifest import load_manifest
from runtime.pipeline import apply_template
from runtime.sampling import Sampler, SamplingConfig, probabilities
from runtime.text import REPLACEMENT, IncrementalDecoder, StopMatcher, TextStream

ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = ROOT / "train" / "demo"
GREEDY = SamplingConfig(temperature=0)


# ---------------------------------------------------------------- helpers (test_runtime_cli.py uses them too)


def make_tokenizer(out: Path) -> Path:
    """A real byte-level BPE (512 tokens, <|endoftext|> = 0) trained on argparse's source in ~0.3 s."""
    from train.data import train_tokenizer

    return train_tokenizer([Path(argparse.__file__)], 512, out)


def make_package(folder: Path, tokenizer: Path, name: str = "tiny-phi-1_5", logits: str = "last",
                 precision: str = "fp32"):
    """(PyTorch model, package path) for a random tiny preset (vocab 512, 128 positions), its KV cache in the graph's
    float type so greedy tokens compare with PyTorch exactly (quantized caches: tests/test_kvcache.py)."""
    from export.options import ExportOptions
    from export.package import export_package
    from tests.conftest import hf_reference, ours_from_reference
    from train import save_pretrained
    from train.config import preset

    config = preset(name)
    model = ours_from_reference(hf_reference(config), config)
    save_pretrained(model, folder / "ckpt", tokenizer=tokenizer)
    package = export_package(folder / "ckpt", folder / "pkg", ExportOptions(precision=precision, logits=logits,
                                                                                     kv_dtype=None), show_progress=False)
    return model, package


class ScriptedBackend:
    """A Backend whose logits pick `script[i]` at the i-th step (the prefill is step 0)."""

    def __init__(self, script: list[int], vocab: int = 600, capacity: int = 64):
        self.script, self.vocab_size, self.capacity = script, vocab, capacity
        self.length, self.calls = 0, 0

    def step(self, ids):
        assert ids and self.length + len(ids) <= self.capacity
        self.length += len(ids)
        logits = np.zeros(self.vocab_size, np.float32)
        logits[self.script[min(self.calls, len(self.script) - 1)]] = 10.0
        self.calls += 1
        return logits

    def truncate(self, length):
        self.length = length


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_path))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer_path):
    return make_package(tmp_path_factory.mktemp("tiny"), tokenizer_path)


@pytest.fixture(scope="module")
def tiny_model(tiny) -> runtime.TextGenerator:
    return runtime.load(tiny[1])


PROMPT_IDS = [int(i) for i in np.random.default_rng(1).integers(1, 512, 16)]


# ---------------------------------------------------------------- greedy against PyTorch


def test_greedy_matches_pytorch(tiny):
    from train.model import greedy_generate

    model, package = tiny
    n = 100  # 16 + 100 of the model's 128 positions
    reference = greedy_generate(model, PROMPT_IDS, n)  # no EOS: a random model says it anywhere
    backend = OrtBackend(load_manifest(package))
    for chunk in (0, 5):  # whole prompt at once, then in chunks of 5
        backend.truncate(0)
        out = generate_ids(backend, PROMPT_IDS, GenerationConfig(n, GREEDY, stop_at_eos=False, prefill_chunk=chunk))
        assert out.tokens == reference
        assert out.finish_reason == stats.LENGTH
        assert backend.length == len(PROMPT_IDS) + n - 1  # the last token is never fed


@pytest.mark.parametrize("name,logits", [("tiny-phi-2", "all")])
def test_greedy_matches_pytorch_other_shapes(name, logits, tmp_path, tokenizer_path):
    from train.model import greedy_generate

    model, package = make_package(tmp_path, tokenizer_path, name, logits)
    reference = greedy_generate(model, PROMPT_IDS, 64)
    out = generate_ids(OrtBackend(load_manifest(package)), PROMPT_IDS, GenerationConfig(64, GREEDY, stop_at_eos=False))
    assert out.tokens == reference


@pytest.mark.skipif(not (DEMO_CHECKPOINT / "config.json").is_file(), reason="train/demo/ is not trained yet")
def test_greedy_matches_pytorch_on_demo_model(tmp_path):
    from export.options import ExportOptions
    from export.package import export_package
    from train import load_pretrained
    from train.model import greedy_generate

    package = export_package(DEMO_CHECKPOINT, tmp_path / "pkg", ExportOptions(precision="fp32", kv_dtype=None), show_progress=False)
    model = load_pretrained(DEMO_CHECKPOINT)
    generator = runtime.load(package)
    ids = generator.encode("import os\n\n\ndef read_lines(path):\n")
    reference = greedy_generate(model, ids, 64, model.config.eos_token_id)
    out = generator.generate_ids(ids, GenerationConfig(64, GREEDY))
    assert out.tokens == reference
    assert out.text == generator.decode([t for t in reference if t != generator.eos_token_id])


# ---------------------------------------------------------------- chat


def test_second_chat_turn_with_kept_cache_equals_one_pass(tiny_model):
    model = tiny_model
    config = GenerationConfig(24, GREEDY, stop_at_eos=False)
    chat = model.chat()
    first = chat.send("def add(a, b):", config)
    assert chat.turns[0].reply == first.text and model.backend.length == len(chat.tokens)
    history, pending = list(chat.tokens), chat.pending
    turn = model.encode(pending + apply_template(model.manifest, "chat", "return a + b", "turn"))
    second = chat.send("return a + b", config)
    assert second.stats.prompt_tokens == len(turn)  # only the new turn was prefilled

    model.backend.truncate(0)  # one pass over the whole conversation from an empty cache
    again = model.generate_ids(history + turn, GenerationConfig(24, GREEDY, stop=("\nAlice:", "\nBob:"),
                                                                stop_at_eos=False))
    assert again.tokens == second.tokens and again.text == second.text
    third = chat.send("thanks", config)  # the chat notices the cache was used and rebuilds it
    assert len(chat.turns) == 3 and third.tokens


def test_chat_context_full_errors_or_drops_oldest_turns(tiny):
    model = runtime.load(tiny[1], EngineOptions(context=48))
    config = GenerationConfig(12, GREEDY, stop_at_eos=False)
    strict = model.chat()
    with pytest.raises(ContextFullError, match="drop"):
        for _ in range(10):
            strict.send("print(1)", config)
    dropping = model.chat(drop_oldest=True)
    for i in range(8):
        dropping.send(f"print({i})", config)
        assert model.backend.length == len(dropping.tokens) <= 48
    assert 0 < len(dropping.turns) < 8 and dropping.turns[-1].user == "print(7)"


# ---------------------------------------------------------------- sampling


def test_same_seed_same_text_and_top_k_1_is_greedy(tiny_model):
    def run(sampling):
        return tiny_model.generate("def f(x):", GenerationConfig(40, sampling, stop_at_eos=False)).tokens

    seeded = SamplingConfig(temperature=1.0, top_p=1.0, seed=7)
    assert run(seeded) == run(seeded)
    assert run(seeded) != run(SamplingConfig(temperature=1.0, top_p=1.0, seed=8))
    assert run(SamplingConfig(temperature=1.5, top_k=1, seed=3)) == run(GREEDY)


def test_top_k_and_top_p_keep_the_most_likely_tokens():
    logits = np.log(np.array([0.1, 0.5, 0.3, 0.1]))
    ids, probs = probabilities(logits, SamplingConfig(temperature=1.0, top_p=0.7))
    assert ids.tolist() == [1, 2] and np.allclose(probs, [0.625, 0.375])
    ids, _ = probabilities(logits, SamplingConfig(temperature=1.0, top_k=3, top_p=1.0))
    assert ids.tolist() == [1, 2, 0, 3]  # top-k keeps ties with its last token, as transformers does
    draws = {Sampler(SamplingConfig(temperature=1.0, top_k=2, seed=s))(logits) for s in range(50)}
    assert draws == {1, 2}


@pytest.mark.parametrize("kwargs,field", [({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top-p"),
                                          ({"top_p": 1.5}, "top-p"), ({"top_k": -1}, "top-k")])
def test_sampling_config_names_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**kwargs)


# ---------------------------------------------------------------- text: detokenizer and stop strings


@pytest.mark.parametrize("text", ["emoji 😀👍🏽 done", "中文字符 and 日本語テキスト", "mixed é ß ∑ 🚀\n中"])
def test_incremental_decoder_never_emits_replacement_chars(tokenizer, text):
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text.split())  # multibyte characters are split across tokens
    decoder = IncrementalDecoder(tokenizer.decode)
    pieces = [decoder.push(t) for t in ids] + [decoder.flush()]
    assert not any(REPLACEMENT in p for p in pieces)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    with_context = IncrementalDecoder(tokenizer.decode, context=tokenizer.encode("中文 prompt").ids)
    assert "".join([with_context.push(t) for t in ids] + [with_context.flush()]) == text


def test_stop_string_split_across_tokens_is_caught_and_never_shown(tokenizer):
    text = "x = 1\nAlice: hello"
    ids = tokenizer.encode(text).ids
    stop = "\nAlice:"
    assert sum(1 for t in ids if tokenizer.decode([t]) in stop) > 2  # the stop string spans several tokens
    shown: list[str] = []
    backend = ScriptedBackend(ids, vocab=512)
    out = generate_ids(backend, [5], GenerationConfig(50, GREEDY, stop=(stop,)), decode=tokenizer.decode,
                       on_text=shown.append)
    assert out.finish_reason == stats.STOP and out.text == "".join(shown) == "x = 1"
    assert out.tokens == ids[:ids.index(tokenizer.token_to_id(":")) + 1]  # stopped at the token that completed it


def test_stop_string_inside_a_multibyte_character_run(tokenizer):
    ids = tokenizer.encode("ok 中文 rest").ids
    out = generate_ids(ScriptedBackend(ids, vocab=512), [5], GenerationConfig(50, GREEDY, stop=("文",)),
                       decode=tokenizer.decode)
    assert out.text == "ok 中" and out.finish_reason == stats.STOP


def test_stop_matcher_holds_back_prefixes_only_while_they_could_match():
    matcher = StopMatcher(["\nAlice:", "###"])
    assert matcher.push("a\nAl") == "a"
    assert matcher.push("bert") == "\nAlbert"
    assert matcher.push("#") == "" and matcher.flush() == "#"
    stream = TextStream(lambda ids: "".join(chr(i) for i in ids), stops=["ab"])
    assert [stream.push(ord(c)) for c in "xxab"] == ["x", "x", "", ""] and stream.stopped


# ---------------------------------------------------------------- the loop on a fake backend


def test_loop_finish_reasons_cancellation_and_stats():
    eos = 0
    out = generate_ids(ScriptedBackend([3, 4, eos, 5]), [1, 2], GenerationConfig(10, GREEDY), eos_token_id=eos)
    assert out.tokens == [3, 4, eos] and out.finish_reason == stats.EOS
    full = ScriptedBackend([3], capacity=6)
    out = generate_ids(full, [1, 2], GenerationConfig(10, GREEDY))
    assert out.finish_reason == stats.CONTEXT and full.length == 6 and len(out.tokens) == 5

    cancel = threading.Event()
    decode = lambda ids: "".join(chr(65 + i % 26) for i in ids)  # noqa: E731
    shown: list[str] = []

    def on_text(piece):
        shown.append(piece)
        if len(shown) == 3:
            cancel.set()

    out = generate_ids(ScriptedBackend(list(range(1, 20))), [1], GenerationConfig(10, GREEDY), decode=decode,
                       on_text=on_text, cancel=cancel)
    assert out.finish_reason == stats.CANCELLED and len(out.tokens) == 3 and out.text == "BCD"
    assert out.stats.ttft_s is not None and out.stats.new_tokens == 3
    assert set(out.stats.to_json()) == set(stats.KEYS)
    out = generate_ids(ScriptedBackend([1]), [1, 2, 3], GenerationConfig(5, GREEDY, prefill_chunk=1),
                       cancel=cancel)
    assert out.tokens == [] and out.stats.ttft_s is None  # cancelled before the prefill


def test_prompt_longer_than_context_is_refused(tiny):
    backend = OrtBackend(load_manifest(tiny[1]), EngineOptions(context=8))
    with pytest.raises(ValueError, match="prompt has 16 tokens but the context holds 8"):
        generate_ids(backend, PROMPT_IDS)
    with pytest.raises(ValueError, match="max_length"):
        OrtBackend(load_manifest(tiny[1]), EngineOptions(context=10_000))


def test_runtime_imports_no_torch():
    code = ("import sys, runtime, runtime.generate, runtime.chat; runtime.load; "
            "bad = [m for m in ('torch', 'transformers', 'onnx', 'train', 'export') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_repetition_penalty_matches_transformers(penalty):
    torch = pytest.importorskip("torch")
    from transformers import RepetitionPenaltyLogitsProcessor

    rng = np.random.default_rng(5)
    logits = rng.normal(size=64).astype(np.float32)
    context = [3, 7, 7, 12, 40]
    sampler = Sampler(SamplingConfig(temperature=0, repetition_penalty=penalty))
    sampler.observe(context[:2])
    sampler.observe(context[2:])
    want = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([context]), torch.tensor(logits)[None])[0]
    assert np.allclose(sampler.penalize(logits), want.numpy())
    assert sampler(logits) == int(want.argmax())


def _fresh(model, ids, config):
    model.backend.truncate(0)
    return model.generate_ids(ids, config).tokens


def test_repetition_penalty_changes_greedy_text(tiny_model):
    plain = _fresh(tiny_model, PROMPT_IDS, GenerationConfig(max_new_tokens=24, sampling=GREEDY, stop_at_eos=False))
    penalized = _fresh(tiny_model, PROMPT_IDS, GenerationConfig(
        max_new_tokens=24, sampling=SamplingConfig(temperature=0, repetition_penalty=5.0), stop_at_eos=False))
    assert penalized != plain and not set(penalized[:8]) & set(PROMPT_IDS)


def test_two_models_in_one_process(tiny, tmp_path, tokenizer_path):
    """No global state: two packages loaded side by side keep their own caches and give their own tokens."""
    other = make_package(tmp_path, tokenizer_path, name="tiny-phi-2")[1]
    config = GenerationConfig(max_new_tokens=12, sampling=GREEDY, stop_at_eos=False)
    alone_a = _fresh(runtime.load(tiny[1]), PROMPT_IDS, config)
    alone_b = _fresh(runtime.load(other), PROMPT_IDS, config)
    a, b = runtime.load(tiny[1]), runtime.load(other)
    a.backend.truncate(0)
    b.backend.truncate(0)
    first_a = a.generate_ids(PROMPT_IDS[:8], config)  # a's cache now holds a half-done sequence
    assert _fresh(b, PROMPT_IDS, config) == alone_b
    assert a.backend.length == 8 + len(first_a.tokens) - 1  # untouched by b
    assert _fresh(a, PROMPT_IDS, config) == alone_a
    assert alone_a != alone_b


def test_thread_default_is_measured_chosen_and_cached(tiny, tmp_path, monkeypatch):
    from runtime import threads

    assert threads.candidates(6) == [1, 2, 4, 6] and threads.candidates(1) == [1]
    monkeypatch.setenv("PHI_EDGE_CACHE", str(tmp_path))
    monkeypatch.setattr(threads, "candidates", lambda cores=None: [1, 2, 4])
    manifest = load_manifest(tiny[1])
    calls = []

    def fake(_manifest, n, _profile):
        calls.append(n)
        return {1: 0.010, 2: 0.0052, 4: 0.0050}[n]  # 2 threads is within 5 % of the fastest: fewer wins

    assert threads.auto_threads(manifest, "low-power", fake) == 2 and calls == [1, 2, 4]
    assert threads.auto_threads(manifest, "low-power", fake) == 2 and calls == [1, 2, 4]  # cached
    assert threads.choose({1: 0.004, 2: 0.005}) == 1


def test_auto_threads_measures_a_real_package(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PHI_EDGE_CACHE", str(tmp_path))
    backend = OrtBackend(load_manifest(tiny[1]), EngineOptions())  # threads=None: measured
    import json

    (path,) = (tmp_path / "threads").glob("*.json")
    entry = json.loads(path.read_text())
    assert backend.threads == entry["threads"] and set(entry["seconds_per_token"]) >= {"1"}
    assert all(s > 0 for s in entry["seconds_per_token"].values())


def test_chat_rebuild_is_cancellable_and_leaves_no_trace():
    """A chat whose cache was used by a plain generate feeds the conversation again with the next turn, in the
    cancellable prefill: Stop before it feeds nothing, and the turn after equals an uninterrupted one."""
    import threading

    import runtime
    from runtime.loop import GenerationConfig
    from runtime.sampling import SamplingConfig

    config = GenerationConfig(max_new_tokens=6, prefill_chunk=8, sampling=SamplingConfig(temperature=0))

    def conversation(cancel_second: bool):
        model = runtime.load()
        chat = model.chat()
        out = [chat.send("Hello! How are you?", config)]
        model.generate("something else entirely", config)  # the cache now holds another sequence
        if cancel_second:
            stop = threading.Event()
            stop.set()
            assert chat.send("And then?", config, cancel=stop).finish_reason == "cancelled"
            assert model.backend.length == 0 and model.cache_owner is None  # nothing fed; rebuilt next time
        out.append(chat.send("And then?", config))
        return [o.tokens for o in out]

    assert conversation(True) == conversation(False)


# ---------------------------------------------------------------- one model, several threads


def test_two_threads_on_one_model_get_what_each_gets_alone():
    """Generations and chats from two threads on one loaded model take turns on its lock (issue 21.1)."""
    model = runtime.load(options=EngineOptions(threads=1))
    config = GenerationConfig(max_new_tokens=24, sampling=GREEDY, stop_at_eos=False)
    prompts = ["def fibonacci(n):", "import os\nimport sys\n", "class Stack:\n"]
    alone = [model.generate(p, config).tokens for p in prompts]
    turns = (["Hello! How are you?", "Write a function."], ["What is a list?", "And a dict?"])
    chats_alone = [[o.tokens for o in _conversation(model, pair, config)] for pair in turns]
    for _ in range(3):
        results: dict = {}

        def generate(i: int) -> None:
            results[i] = model.generate(prompts[i], config).tokens

        def chat(i: int) -> None:
            results[f"chat{i}"] = [o.tokens for o in _conversation(model, turns[i], config)]

        workers = [threading.Thread(target=generate, args=(i,)) for i in range(3)]
        workers += [threading.Thread(target=chat, args=(i,)) for i in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
        assert [results[i] for i in range(3)] == alone
        assert [results["chat0"], results["chat1"]] == chats_alone


def _conversation(model, turns, config):
    session = model.chat()
    return [session.send(t, config) for t in turns]


def test_wait_false_is_told_the_model_is_busy():
    model = runtime.load(options=EngineOptions(threads=1))
    started, release = threading.Event(), threading.Event()
    config = GenerationConfig(max_new_tokens=8, sampling=GREEDY, stop_at_eos=False)

    def hold(piece: str) -> None:
        started.set()
        release.wait(timeout=60)

    session = model.chat()
    worker = threading.Thread(target=model.generate, args=("def f(x):", config), kwargs={"on_text": hold})
    worker.start()
    try:
        assert started.wait(timeout=60)
        with pytest.raises(runtime.ModelBusyError, match="generating for another caller"):
            model.generate("x", config, wait=False)
        with pytest.raises(runtime.ModelBusyError):
            session.send("hi", config, wait=False)
    finally:
        release.set()
        worker.join(timeout=60)
    assert model.generate("def f(x):", config, wait=False).finish_reason == "length"
