"""SIGTERM's KeyboardInterrupt raised inside a C extension can surface as another error (torch: "could not determine the
shape of object type"; a ValueError or OSError from the work): once SIGTERM has arrived, every CLI that writes
reports the interruption and exits 143, never "error:" and 2. Deterministic: the work sets the flag and raises."""

from __future__ import annotations

import pytest

from runtime import files


def _interrupted_as(error: BaseException):
    def work(*args, **kwargs):
        files.terminated = True
        raise error

    return work


@pytest.fixture(autouse=True)
def fresh_flag(monkeypatch):
    monkeypatch.setattr(files, "terminated", False)


@pytest.mark.parametrize("error", [ValueError("could not determine the shape of object type"), OSError("EINTR")])
def test_train_data(error, tmp_path, monkeypatch, capsys):
    from train import data

    monkeypatch.setattr(data, "_cmd_stdlib", _interrupted_as(error))
    assert data.main(["stdlib", "--out", str(tmp_path / "corpus")]) == 143
    err = capsys.readouterr().err
    assert err.startswith("interrupted:") and "error:" not in err


def test_train(tmp_path, monkeypatch, capsys):
    import train.__main__ as cli
    import train.trainer

    monkeypatch.setattr(train.trainer, "train", _interrupted_as(ValueError("shape of object type")))
    assert cli.main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--preset", "tiny-phi-1_5"]) == 143
    err = capsys.readouterr().err
    assert err.startswith("interrupted:") and "error:" not in err


def test_train_synth(tmp_path, monkeypatch, capsys):
    import train.synth.__main__ as cli
    from runtime.pipeline import DEFAULT_PACKAGE

    topics = tmp_path / "topics.txt"
    topics.write_text("lists\n")
    monkeypatch.setattr(cli, "run", _interrupted_as(RuntimeError("teacher stopped")))
    code = cli.main(["--topics", str(topics), "--out", str(tmp_path / "synth"), "--teacher-package",
                     str(DEFAULT_PACKAGE)])
    err = capsys.readouterr().err
    assert code == 143 and err.startswith("interrupted:") and "error:" not in err


def test_an_error_without_sigterm_is_still_one_line_and_2(tmp_path, monkeypatch, capsys):
    from train import data

    def fail(*args, **kwargs):
        raise ValueError("the corpus folder is empty; point --out at a new folder")

    monkeypatch.setattr(data, "_cmd_stdlib", fail)
    assert data.main(["stdlib", "--out", str(tmp_path / "corpus")]) == 2
    assert capsys.readouterr().err == "error: the corpus folder is empty; point --out at a new folder\n"
