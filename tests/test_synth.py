"""python -m train.synth: a fake OpenAI-compatible teacher on 127.0.0.1 checks the job (gates, resume, settings,
retries); the demo package as an in-process teacher checks the CPU path end to end into train.data."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from train.data import load_source, tokenize_to_shards, train_tokenizer
from train.records import RecordOptions
from train.synth.__main__ import main
from train.synth.filters import GateOptions, QualityGates
from train.synth.job import SynthOptions, run
from train.synth.prompts import parse_subtopics
from train.synth.teacher import HttpTeacher, RuntimeTeacher, TeacherError

REPO = Path(__file__).resolve().parents[1]
EVAL_ITEM = ("Which planet is known as the red planet because of the iron oxide on its surface and what gives the "
             "color")
LESSON = ("{sub}: a careful explanation. We start from the definition of {sub} and build up the idea step by step. "
          "Each step is checked against a small example, and the example is written out in full so that the "
          "reader can follow it. Variation {n} looks at the case where the input is empty.")


class Fake:
    """Answers /v1/completions: subtopics for expansion prompts, one of several kinds of text otherwise."""

    def __init__(self, fail_after: int | None = None, flaky: int = 0):
        self.calls = 0
        self.prompts: list[str] = []
        self.fail_after, self.flaky = fail_after, flaky
        self.lock = threading.Lock()

    def reply(self, prompt: str) -> tuple[int, str]:
        with self.lock:
            self.calls += 1
            n = self.calls
            self.prompts.append(prompt)
            if self.flaky:
                self.flaky -= 1
                return 503, ""
            if self.fail_after is not None and n > self.fail_after:
                return 500, ""
        if "specific subtopics" in prompt:
            return 200, " Sorting\n2. Searching\n3. Searching\n4) Hashing\n"
        sub = next(s for s in ("Sorting", "Searching", "Hashing") if s in prompt)
        if sub == "Hashing" and "Exercise 1" in prompt:
            return 200, "too short"
        if sub == "Hashing":
            return 200, "loop " * 80
        if sub == "Searching" and "Exercise 1" in prompt:
            return 200, LESSON.format(sub=sub, n=0) + " Quiz: " + EVAL_ITEM + "?"
        return 200, LESSON.format(sub=sub, n=0)  # the same text for every Sorting/Searching textbook: duplicates


@pytest.fixture()
def server():
    fakes: list[Fake] = [Fake()]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/v1/completions" and body["model"] == "teacher"
            code, text = fakes[0].reply(body["prompt"])
            payload = json.dumps({"choices": [{"text": text}]}).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield fakes, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def _teacher(url: str) -> HttpTeacher:
    return HttpTeacher(url, "teacher", timeout_s=10, retries=2, backoff_s=0.01)


@pytest.fixture()
def files(tmp_path):
    topics = tmp_path / "topics.txt"
    topics.write_text("# seed topics\nalgorithms\n\nalgorithms\n")
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"question": EVAL_ITEM, "answer": "Mars"}) + "\n")
    return topics, evals


def test_gates_counts_and_output(server, files, tmp_path):
    fakes, url = server
    topics, evals = files
    report = run(topics, tmp_path / "out", _teacher(url), SynthOptions(subtopics=3, per_subtopic=2, concurrency=4),
                 GateOptions(min_chars=50), [evals], RecordOptions(text_field="question"))
    # 1 topic -> subtopics Sorting, Searching, Hashing (the repeated "Searching" once) -> 3 x 2 requests
    assert report["requests"] == 6 and report["subtopics"] == 3 and report["evaluation_items"] == 1
    assert report["removed"] == {"length": 1, "quality": 1, "exact": 1, "near-duplicate": 0, "decontaminate": 1}
    kept = [json.loads(line) for line in (tmp_path / "out/textbooks.jsonl").read_text().splitlines()]
    assert report["kept"] == len(kept) == 2
    assert [(r["subtopic"], r["kind"]) for r in kept] == [("Sorting", "textbook"), ("Searching", "textbook")]
    assert all(EVAL_ITEM not in r["text"] for r in kept)
    prompts = [p for p in fakes[0].prompts if "specific subtopics" not in p]
    assert len({p for p in prompts}) == 6 and any("Exercise 1" in p for p in prompts)


def test_resume_after_a_failure_asks_only_for_the_rest(server, files, tmp_path):
    fakes, url = server
    topics, _ = files
    fakes[0] = Fake(fail_after=4)  # 1 expansion + 3 replies, then the server breaks
    options = SynthOptions(subtopics=3, per_subtopic=2, concurrency=1)
    with pytest.raises(TeacherError, match=r"failed 3 times \(HTTP 500"):
        run(topics, tmp_path / "out", _teacher(url), options, GateOptions(min_chars=50))
    raw = (tmp_path / "out/raw.jsonl").read_text().splitlines()
    assert len(raw) == 3
    with open(tmp_path / "out/raw.jsonl", "a") as f:
        f.write('{"id": "cut sho')  # a line cut short by a kill
    fakes[0] = Fake()
    report = run(topics, tmp_path / "out", _teacher(url), options, GateOptions(min_chars=50))
    assert fakes[0].calls == 3 and report["generated_now"] == 3 and report["requests"] == 6
    assert len((tmp_path / "out/raw.jsonl").read_text().splitlines()) == 6
    # other settings are refused, not mixed in; --force starts over
    calls = fakes[0].calls
    refiltered = run(topics, tmp_path / "out", _teacher(url), options, GateOptions(min_chars=5000))
    assert fakes[0].calls == calls and refiltered["kept"] == 0  # new gates: no new request, only a new filter
    with pytest.raises(ValueError, match=r"generated with other settings \(options\); pass --force"):
        run(topics, tmp_path / "out", _teacher(url), SynthOptions(subtopics=3, per_subtopic=1))
    report = run(topics, tmp_path / "out", _teacher(url), SynthOptions(subtopics=3, per_subtopic=1),
                 GateOptions(min_chars=50), force=True)
    assert report["requests"] == 3 and report["generated_now"] == 3


def test_retries_and_cli_errors(server, files, tmp_path, capsys):
    fakes, url = server
    topics, _ = files
    fakes[0] = Fake(flaky=2)  # two 503s, then answers
    assert _teacher(url).complete("specific subtopics", max_tokens=8, temperature=0.5, seed=1).startswith(" Sorting")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not ours")
    assert main(["--topics", str(topics), "--out", str(mine), "--teacher-url", url, "--teacher-model", "teacher"]) == 2
    assert "has no synth.json, so train.synth did not write it" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "not ours"
    assert main(["--topics", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o"), "--teacher-url", url,
                 "--teacher-model", "teacher"]) == 2
    assert "topic file" in capsys.readouterr().err
    assert main(["--topics", str(topics), "--out", str(tmp_path / "o"), "--teacher-url", url]) == 2
    assert "--teacher-url needs --teacher-model" in capsys.readouterr().err


def test_near_duplicates_and_subtopic_parsing():
    gates = QualityGates(GateOptions(min_chars=20))
    base = " ".join(f"word{i}" for i in range(200))
    assert gates.check(base) is None
    assert gates.check(base.replace("word100", "other")) == "near-duplicate"  # Jaccard ~0.95
    assert gates.check(" ".join(f"fresh{i}" for i in range(200))) is None
    assert parse_subtopics("1. Alpha\n2) Beta.\n- Gamma\n\n12345\nAlpha\n", 5) == ["Alpha", "Beta", "Gamma"]


def test_demo_teacher_feeds_train_data(tmp_path):
    """The CPU path of the issue: the demo package writes textbooks that the tokenizer and shards train on."""
    topics = tmp_path / "topics.txt"
    topics.write_text("binary search\nrecursion\n")
    report = run(topics, tmp_path / "synth", RuntimeTeacher(REPO / "runtime/demo"),
                 SynthOptions(subtopics=2, per_subtopic=2, max_tokens=96), GateOptions(min_chars=100))
    assert report["requests"] == 8 and report["kept"] >= 1
    assert sum(report["removed"].values()) + report["kept"] == report["requests"]
    textbooks = tmp_path / "synth/textbooks.jsonl"
    tok = train_tokenizer([textbooks], 300, tmp_path / "tok.json")
    info = tokenize_to_shards([textbooks], tok, tmp_path / "shards")
    assert load_source(tmp_path / "shards").info.num_documents == info.num_documents == report["kept"]


# ---------------------------------------------------------------- hostile teachers (issue 21 B, D, L)


def _serve(handler_body):
    """A server on 127.0.0.1 whose POST handler is handler_body(handler); returns (url, seen headers, stop)."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(dict(self.headers))
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            handler_body(self)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen, httpd.shutdown


def _reply(handler, code: int, payload: bytes, headers: dict | None = None) -> None:
    handler.send_response(code)
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def test_a_redirect_is_not_followed_and_the_key_never_leaves(monkeypatch):
    other_url, other_seen, stop_other = _serve(lambda h: _reply(h, 200, json.dumps(
        {"choices": [{"text": "stolen"}]}).encode()))
    url, seen, stop = _serve(lambda h: _reply(h, 302, b"", {"Location": other_url + "/completions"}))
    monkeypatch.setenv("SYNTH_TEST_KEY", "secret-key")
    try:
        teacher = HttpTeacher(url, "teacher", timeout_s=5, retries=3, backoff_s=0.01, api_key_env="SYNTH_TEST_KEY")
        with pytest.raises(TeacherError, match="HTTP 302.*redirects are not followed"):
            teacher.complete("x", max_tokens=4, temperature=0.5, seed=1)
        assert len(seen) == 1 and seen[0]["Authorization"] == "Bearer secret-key"  # asked once, not retried
        assert other_seen == []  # the other host never heard from us, key or not
    finally:
        stop()
        stop_other()


@pytest.mark.parametrize("payload, expect", [
    (b"[1, 2]", "without a string choices"),
    (json.dumps({"choices": [{"text": 5}]}).encode(), "without a string choices"),
    (json.dumps({"choices": []}).encode(), "without a string choices"),
    (b"<html>", "not JSON"),
])
def test_replies_that_are_not_completions_are_refused(payload, expect):
    url, seen, stop = _serve(lambda h: _reply(h, 200, payload))
    try:
        with pytest.raises(TeacherError, match=expect):
            HttpTeacher(url, "teacher", timeout_s=5, retries=2, backoff_s=0.01).complete("x", max_tokens=4,
                                                                                       temperature=0.5, seed=1)
        assert len(seen) == 1
    finally:
        stop()


def test_status_codes_say_whether_they_were_retried():
    url, seen, stop = _serve(lambda h: _reply(h, 400, b"{}"))
    try:
        with pytest.raises(TeacherError, match="HTTP 400 Bad Request .not retried"):
            HttpTeacher(url, "teacher", timeout_s=5, retries=4, backoff_s=0.01).complete("x", max_tokens=4,
                                                                                       temperature=0.5, seed=1)
        assert len(seen) == 1
    finally:
        stop()


def test_reply_size_and_total_time_are_bounded():
    import time

    big = b'{"choices": [{"text": "' + b"x" * (9 << 20) + b'"}]}'
    url, _, stop = _serve(lambda h: _reply(h, 200, big))
    try:
        with pytest.raises(TeacherError, match="reply of more than 8 MiB"):
            HttpTeacher(url, "teacher", timeout_s=10, retries=0).complete("x", max_tokens=4, temperature=0.5, seed=1)
    finally:
        stop()

    def trickle(h):  # one byte every 0.3 s: each read is quick, the whole never ends in time
        payload = json.dumps({"choices": [{"text": "slow " * 50}]}).encode()
        h.send_response(200)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        for b in payload:
            try:
                h.wfile.write(bytes([b]))
                h.wfile.flush()
            except OSError:
                return
            time.sleep(0.3)

    url, seen, stop = _serve(trickle)
    try:
        start = time.monotonic()
        with pytest.raises(TeacherError, match="no complete reply within 1 s"):
            HttpTeacher(url, "teacher", timeout_s=1, retries=1, backoff_s=0.01).complete("x", max_tokens=4,
                                                                                       temperature=0.5, seed=1)
        assert time.monotonic() - start < 5 and len(seen) == 2  # two attempts of 1 s each
    finally:
        stop()


def test_a_damaged_raw_line_is_skipped_and_the_rest_kept(server, files, tmp_path, capsys):
    fakes, url = server
    topics, _ = files
    options = SynthOptions(subtopics=3, per_subtopic=2, concurrency=1)
    run(topics, tmp_path / "out", _teacher(url), options, GateOptions(min_chars=50))
    raw = tmp_path / "out/raw.jsonl"
    lines = raw.read_text().splitlines()
    lines[1] = '{"id": broken'  # one damaged line in the middle
    raw.write_text("\n".join(lines) + "\n")
    calls = fakes[0].calls
    report = run(topics, tmp_path / "out", _teacher(url), options, GateOptions(min_chars=50))
    assert fakes[0].calls == calls + 1 and report["generated_now"] == 1 and report["damaged_raw_lines"] == 1
    assert "1 damaged line skipped (line 2)" in capsys.readouterr().err
    assert len(raw.read_text().splitlines()) == 7  # the damaged line stays, the other 5 replies too, 1 new


def test_sigterm_exits_143_like_every_cli(tmp_path):
    """issue 21: one exit-code convention: 130 for Ctrl-C, 143 (128 + SIGTERM) for SIGTERM, in synth and train.data."""
    import signal
    import subprocess
    import sys
    import time

    def slow(h):
        time.sleep(30)

    url, _, stop = _serve(slow)
    topics = tmp_path / "topics.txt"
    topics.write_text("algorithms\n")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "train.synth", "--topics", str(topics), "--out",
                                 str(tmp_path / "out"), "--teacher-url", url, "--teacher-model", "teacher"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (tmp_path / "out" / "synth.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143 and "Traceback" not in err, err
    finally:
        stop()
