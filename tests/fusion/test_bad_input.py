"""Bad input to `clipforge fuse train | eval | compare`: one-line errors, nothing written, nothing lost."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from clipforge.cli import main
from clipforge.configfile import ConfigError
from clipforge.fusion.config import load_fuse_config
from clipforge.fusion.data import table_rows
from clipforge.fusion.train import budget_width, train_head


def _table(questions: Path, out: Path, n: int = 24, **edit: dict) -> Path:
    """The first `n` rows of the question set with absolute image paths; `edit` maps row number -> changed fields."""
    rows = [json.loads(r) for r in (questions / "train.jsonl").read_text().splitlines()[:n]]
    for i, r in enumerate(rows, 1):
        r["image"] = str(questions / r["image"])
        r.update(edit.get(str(i), {}))
    out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return out


def _sets(micro_bundle: Path, questions: Path, tmp_path: Path, *extra: str) -> list[str]:
    common = [
        f"data.bundle={micro_bundle}",
        f"data.train={questions / 'train.jsonl'}",
        f"data.val={questions / 'test.jsonl'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "fit.epochs=1",
        *extra,
    ]
    return [x for kv in common for x in ("--set", kv)]


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the lines above are progress bars
    assert err.startswith("clipforge: error: "), err
    return err


def test_failed_train_keeps_the_previous_run(
    questions: Path, micro_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "runs" / "keep"
    assert main(["fuse", "train", "smoke", *_sets(micro_bundle, questions, tmp_path, f"out_dir={run}")]) == 0
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert {Path("config.yaml"), Path("metrics.jsonl"), Path("head/head.json")} <= set(before)
    capsys.readouterr()

    bad = _table(questions, tmp_path / "bad.jsonl", **{"5": {"label": "maybe"}})
    argv = ["fuse", "train", "smoke", *_sets(micro_bundle, questions, tmp_path, f"out_dir={run}", f"data.train={bad}")]
    assert main(argv) == 1
    assert f"{bad}: binary label 'maybe'" in _one_line_error(capsys)
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # config.yaml still names the good table; metrics and head untouched
    assert sorted(p.name for p in run.parent.iterdir()) == ["keep"]  # no staging folder left behind

    fresh = tmp_path / "runs" / "fresh"
    argv = [
        "fuse",
        "train",
        "smoke",
        *_sets(micro_bundle, questions, tmp_path, f"out_dir={fresh}", f"data.train={bad}"),
    ]
    assert main(argv) == 1
    assert not fresh.exists()  # a failed first run leaves no folder with a config but no head


def test_train_refuses_to_replace_files_that_are_not_a_runs(
    questions: Path, micro_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    project = tmp_path / "project"  # `--set out_dir=.` in a project with its own config.yaml
    project.mkdir()
    (project / "config.yaml").write_text("mine: true\n")
    argv = ["fuse", "train", "smoke", *_sets(micro_bundle, questions, tmp_path, f"out_dir={project}")]
    assert main(argv) == 1
    assert "holds config.yaml but no head/: not a fuse run's folder" in _one_line_error(capsys)
    assert [p.name for p in project.iterdir()] == ["config.yaml"] and "mine" in (project / "config.yaml").read_text()
    assert not (tmp_path / "cache").exists()  # refused before any embedding


@pytest.mark.parametrize("n", ["-1", "0"])  # 0 resamples used to crash in np.quantile after all the training
def test_compare_refuses_too_few_bootstrap_resamples(
    n: str, questions: Path, micro_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cmp"
    sets = _sets(micro_bundle, questions, tmp_path, f"out_dir={out}")
    with pytest.raises(SystemExit) as exc:
        main(["fuse", "compare", "smoke", "--kinds", "late,additive", "--bootstrap", n, *sets])
    assert exc.value.code == 2 and f"--bootstrap: must be at least 1, got {n}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": None}, "row 3: empty or null text field 'text'"),
        ({"text": ""}, "row 3: empty or null text field 'text'"),
        ({"text": "  \t "}, "row 3: empty or null text field 'text'"),
        ({"label": ["circle", 5]}, "row 3: label list .* holds a non-string 5"),
        ({"heldout": "garbage"}, "row 3: group field 'heldout' must be true/false"),
        ({"label": None}, "row 3: the label field is missing or null"),  # was a class named "None"
    ],
)
def test_bad_table_rows_are_refused_with_file_and_row(
    questions: Path, tmp_path: Path, fields: dict, message: str
) -> None:
    table = _table(questions, tmp_path / "t.jsonl", n=5, **{"3": fields})
    with pytest.raises(ValueError, match=f"{table}: {message}"):
        table_rows(table, "image", "text", "label", ("heldout",))


def test_group_values_that_are_booleans_in_any_spelling_are_read(questions: Path, tmp_path: Path) -> None:
    spellings = [True, "yes", 1, "TRUE", False, "no", 0, None]
    table = _table(
        questions, tmp_path / "t.jsonl", n=8, **{str(i + 1): {"heldout": v} for i, v in enumerate(spellings)}
    )
    rows = table_rows(table, "image", "text", "label", ("heldout",))
    assert [r.groups["heldout"] for r in rows] == [True] * 4 + [False] * 4


def test_non_utf8_table_names_the_file(tmp_path: Path) -> None:
    for name in ("t.jsonl", "t.csv"):
        table = tmp_path / name
        table.write_bytes(b"\xff\xfe" + '{"image": "a.jpg"}'.encode("utf-16-le"))
        with pytest.raises(ValueError, match=f"{table}: not UTF-8 text"):
            table_rows(table, "image", "text", "label", ())


def test_device_is_checked_even_when_features_are_cached(
    questions: Path, micro_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    assert main(["fuse", "train", "smoke", *_sets(micro_bundle, questions, tmp_path, f"out_dir={run}")]) == 0
    capsys.readouterr()
    devices = ["bogus"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        sets = _sets(micro_bundle, questions, tmp_path, f"out_dir={tmp_path / device}", f"data.device={device}")
        assert main(["fuse", "train", "smoke", *sets]) == 1  # the features are in the cache
        assert f"device {device!r}" in _one_line_error(capsys)
        assert not (tmp_path / device).exists()
        argv = ["fuse", "eval", str(run), "--data", str(questions / "test.jsonl"), "--device", device]
        assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 1
        assert f"device {device!r}" in _one_line_error(capsys)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_learning_rate_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="fit.lr must be a finite number"):
        load_fuse_config("smoke", [f"fit.lr={value}"])


def test_warnings_for_an_absent_group_a_one_class_table_and_a_budget_nothing_fits(
    questions: Path, micro_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    table = _table(questions, tmp_path / "t.jsonl", n=6)
    assert len(table_rows(table, "image", "text", "label", ("heldout", "nokey"))) == 6
    assert [r.getMessage() for r in caplog.records] == [
        f"{table}: no row has the group field 'nokey': its subset is empty"
    ]

    caplog.clear()
    yes_only = _table(questions, tmp_path / "yes.jsonl", n=6, **{str(i): {"label": "yes"} for i in range(1, 7)})
    cfg = load_fuse_config(
        "smoke",
        [f"out_dir={tmp_path / 'run'}", f"data.bundle={micro_bundle}", f"data.train={yes_only}",
         f"data.cache_dir={tmp_path / 'cache'}", "fit.epochs=1"],
    )  # fmt: skip
    train_head(cfg, progress=False)
    assert any("every training label is 'yes'" in r.getMessage() for r in caplog.records)

    caplog.clear()
    assert budget_width("tensor", 16, 1, 10) == 1
    assert any(
        "head.budget=10 is below the smallest tensor head: using width 1" in r.getMessage() for r in caplog.records
    )


def test_a_csv_cell_left_empty_is_not_a_label_named_none_and_a_bom_is_not_part_of_a_name(
    questions: Path, tmp_path: Path
) -> None:
    """csv.DictReader gives None for a short row's missing cells; Excel starts its UTF-8 CSV with a BOM, which
    made the first column 'image' unfindable."""
    image = str(questions / "images" / sorted(p.name for p in (questions / "images").iterdir())[0])
    table = tmp_path / "t.csv"
    table.write_text(f"image,text,label\n{image},is it red?,yes\n", encoding="utf-8-sig")
    assert [r.label for r in table_rows(table, "image", "text", "label", ())] == ["yes"]
    table.write_text(f"image,text,label\n{image},is it red?,yes\n{image},is it blue?\n", encoding="utf-8-sig")
    with pytest.raises(ValueError, match="row 2: the label field is missing or null"):
        table_rows(table, "image", "text", "label", ())
    assert [r.label for r in table_rows(table, "image", "text", None, ())] == [None, None]  # predict: no labels


def test_label_names_of_multilabel_and_multiclass_tables() -> None:
    from clipforge.fusion.features import PairSet
    from clipforge.fusion.train import label_list, label_names

    assert label_list("a| b |") == ["a", "b"] and label_list([" a", "b"]) == ["a", "b"]

    def names(task: str, labels: list) -> list[str]:
        cfg = load_fuse_config("smoke", [f"head.task={task}", "data.train=t.csv"])
        empty = torch.zeros((0, 4)).numpy()
        return label_names(cfg, PairSet(empty, empty, empty[:, 0], empty[:, 0], labels, {}, [], "f"))

    assert names("multilabel", ["a| b", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="no row has a label"):
        names("multilabel", ["", []])
    with pytest.raises(ValueError, match="a row has an empty label"):
        names("multiclass", ["circle", ""])


def test_kinds_named_twice_train_once_and_a_json_file_is_not_read_as_shards(tmp_path: Path) -> None:
    from collections import Counter

    from clipforge.fusion.compare import parse_kinds
    from clipforge.fusion.data import shard_rows

    assert parse_kinds("tensor, late,tensor") == ["tensor", "late"]  # one folder, one row each
    (tmp_path / "q.json").write_text("[]")
    with pytest.raises(ValueError, match=r"q.json: a table is a .jsonl .* or a .csv file"):
        shard_rows(str(tmp_path / "q.json"), "text", "label", (), Counter())


def test_the_late_kinds_logged_loss_is_after_its_step() -> None:
    """L-BFGS's step() returns the loss from before the step: the curve of `late` lagged an epoch."""
    from clipforge.fusion.kinds import build_fusion
    from clipforge.fusion.train import _loss_now, encode_targets, fit
    from tests.fusion.helpers import xor_set

    data = xor_set(n=200)
    cfg = load_fuse_config("smoke", ["head.kind=late", "fit.epochs=1"])
    module = build_fusion("late", data.dim, 1)  # binary: one logit
    history = fit(module, data, None, cfg, ["no", "yes"], progress=False)["history"]
    y = torch.from_numpy(encode_targets(data.labels, "binary", ["no", "yes"]))
    zi, zt = torch.from_numpy(data.image_features), torch.from_numpy(data.text_features)
    ii, ti = torch.from_numpy(data.image_idx), torch.from_numpy(data.text_idx)
    assert abs(history[-1]["loss"] - _loss_now(module, zi, zt, ii, ti, y, "binary")) < 1e-6
