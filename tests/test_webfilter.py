"""train.webfilter: the educational-value classifier on the demo model's embeddings separates a labelled sample
it never trained on, is stored without pickle, and scores records into a kept set train.data reads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from train.data import load_source, tokenize_to_shards
from train.webfilter import Classifier, fit, main, score

DEMO = Path(__file__).resolve().parents[1] / "train" / "demo"
WORDS = "the of and buy now cheap click here free offer best price lol omg wow amazing deal".split()


def _educational(rng: random.Random, i: int) -> str:
    name = rng.choice(["total", "count", "index", "value", "result"])
    return (f'def compute_{name}_{i}(items):\n    """Return the {name} of the items.\n\n    Each item is visited '
            f'once, so the cost grows linearly.\n    """\n    {name} = 0\n    for item in items:\n'
            f'        {name} += item\n    return {name}\n')


def _junk(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(40)).upper() + " !!! $$$"


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_classifier_separates_and_filters(tmp_path, capsys):
    rng = random.Random(0)
    sample = [{"text": _educational(rng, i), "label": 1} for i in range(12)] + \
             [{"text": _junk(rng), "label": False} for _ in range(12)]
    labelled = _write(tmp_path / "sample.jsonl", sample)
    report = fit(labelled, DEMO, tmp_path / "clf.json", max_tokens=64)
    assert report["trained_on"] == 24 and report["cv_accuracy"] >= 0.9
    stored = json.loads((tmp_path / "clf.json").read_text())  # plain JSON: nothing to unpickle
    assert len(stored["coef"]) == 256 and stored["format"] == "phi-webfilter/1"
    web = _write(tmp_path / "web.jsonl", [{"text": _educational(rng, 100 + i)} for i in range(5)] +
                 [{"text": _junk(rng)} for _ in range(5)])
    counts = score(tmp_path / "clf.json", [web], tmp_path / "scored.jsonl", tmp_path / "kept.jsonl")
    assert counts["scored"] == 10
    scores = [json.loads(line)["score"] for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert min(scores[:5]) > max(scores[5:])  # unseen educational documents outrank unseen junk
    assert counts["kept"] == 5
    info = tokenize_to_shards([tmp_path / "kept.jsonl"], DEMO / "tokenizer.json", tmp_path / "shards")
    assert load_source(tmp_path / "shards").info.num_documents == info.num_documents == 5


def test_errors(tmp_path, capsys):
    few = _write(tmp_path / "few.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0}])
    assert main(["fit", "--labelled", str(few), "--checkpoint", str(DEMO), "--out", str(tmp_path / "c.json")]) == 2
    assert "at least 5 records of each label" in capsys.readouterr().err
    bad = _write(tmp_path / "bad.jsonl", [{"text": "a", "label": "yes"}])
    assert main(["fit", "--labelled", str(bad), "--checkpoint", str(DEMO), "--out", str(tmp_path / "c.json")]) == 2
    assert "label 'yes' is not 1/0 or true/false" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"format": "phi-webfilter/1", "checkpoint": str(DEMO),
                                                     "checkpoint_sha256": "0" * 64, "max_tokens": 8,
                                                     "mean": [0.0] * 256, "std": [1.0] * 256, "coef": [0.1] * 256,
                                                     "intercept": 0.0}))
    with pytest.raises(ValueError, match="not the checkpoint"):
        Classifier(tmp_path / "other.json")
    assert not (tmp_path / "c.json").exists()


def _classifier(tmp_path: Path, **changes) -> Path:
    """A classifier file for the demo checkpoint with `changes` (fields replaced as given)."""
    from train.webfilter import Embedder

    model = {"format": "phi-webfilter/1", "checkpoint": str(DEMO), "checkpoint_sha256": Embedder(DEMO).sha256,
             "max_tokens": 16, "mean": [0.0] * 256, "std": [1.0] * 256, "coef": [0.01] * 256, "intercept": 0.0}
    path = tmp_path / f"clf{len(list(tmp_path.glob('clf*')))}.json"
    path.write_text(json.dumps({**model, **changes}))
    return path


def test_outputs_never_overwrite_inputs_or_each_other(tmp_path, capsys):
    """issue 21 C: --out equal to --input (or a link to it), --out equal to --kept: refused before any work."""
    web = _write(tmp_path / "web.jsonl", [{"text": "def f(x):\n    return x\n", "id": 7}])
    before = web.read_bytes()
    clf = _classifier(tmp_path)
    (tmp_path / "link.jsonl").symlink_to(web)
    for args, expect in [(["--out", str(web)], "is the input"),
                         (["--out", str(tmp_path / "link.jsonl")], "is the input"),
                         (["--out", str(tmp_path / "x.jsonl"), "--kept", str(web)], "is the input"),
                         (["--out", str(tmp_path / "x.jsonl"), "--kept", str(tmp_path / "x.jsonl")], "both"),
                         (["--out", str(clf)], "is the input")]:
        assert main(["score", "--classifier", str(clf), "--input", str(web), *args]) == 2
        err = capsys.readouterr().err
        assert expect in err and err.count("\n") == 1, err
    assert web.read_bytes() == before and not (tmp_path / "x.jsonl").exists()
    labelled = _write(tmp_path / "sample.jsonl", [{"text": "a", "label": 1}])
    assert main(["fit", "--labelled", str(labelled), "--checkpoint", str(DEMO), "--out", str(labelled)]) == 2
    assert "is the input" in capsys.readouterr().err and labelled.read_text().startswith('{"text"')


@pytest.mark.parametrize("changes, expect", [
    ({"intercept": 1e308}, None),  # a score of 1 or 0, no OverflowError in exp
    ({"intercept": -1e308}, None),
    ({"coef": [1e308, -1e308] * 128}, "no number for a record"),
    ({"coef": ["0.1"] * 256}, "'coef' must be a list of finite numbers"),
    ({"intercept": "0"}, "'intercept' must be a finite number"),
    ({"coef": [0.1] * 10}, "one length"),
    ({"max_tokens": "16"}, "'max_tokens' must be a positive integer"),
])
def test_damaged_classifiers_are_one_line(tmp_path, capsys, changes, expect):
    web = _write(tmp_path / "web.jsonl", [{"text": "def f(x):\n    return x\n"}])
    code = main(["score", "--classifier", str(_classifier(tmp_path, **changes)), "--input", str(web), "--out",
                 str(tmp_path / "scored.jsonl")])
    err = capsys.readouterr().err
    if expect is None:
        assert code == 0, err
        score_ = json.loads((tmp_path / "scored.jsonl").read_text())["score"]
        assert 0.0 <= score_ <= 1.0
    else:  # the progress bar may have started: the error is the one last line
        assert code == 2 and expect in err.strip().splitlines()[-1] and "Traceback" not in err, err


def test_a_list_file_and_texts_that_are_not_strings_are_one_line(tmp_path, capsys):
    (tmp_path / "list.json").write_text("[1, 2]")
    web = _write(tmp_path / "web.jsonl", [{"text": 5}])
    assert main(["score", "--classifier", str(tmp_path / "list.json"), "--input", str(web), "--out",
                 str(tmp_path / "o.jsonl")]) == 2
    assert "not a phi-webfilter/1 classifier" in capsys.readouterr().err
    assert main(["score", "--classifier", str(_classifier(tmp_path)), "--input", str(web), "--out",
                 str(tmp_path / "o.jsonl")]) == 2
    assert "is a int, not text" in capsys.readouterr().err
    labelled = _write(tmp_path / "l.jsonl", [{"text": ["a"], "label": 1}])
    assert main(["fit", "--labelled", str(labelled), "--checkpoint", str(DEMO), "--out", str(tmp_path / "c.json")]) == 2
    assert "not text" in capsys.readouterr().err
