"""The training side of the `clipforge` command on bad input: exit 1 with one line, or a warning and exit 0."""

import json
import shlex
from pathlib import Path

import pytest

from clipforge.cli import main
from tests.training.test_train import one_pair_shard


def test_eval_of_one_pair_warns_what_cannot_be_computed(synth_data, micro_bundle, tmp_path, capsys):
    val = one_pair_shard(synth_data, tmp_path / "one.tar")
    assert main(["eval", str(micro_bundle), "--val", str(val), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["retrieval_pairs"] == 1
    assert captured.err.strip().splitlines() == [
        "clipforge: warning: diagnostics uniformity_image, uniformity_text, cca_top not computable from 1 pair(s) "
        "(need at least 2)"
    ]
    # asking for fewer than 2 pairs is a usage mistake (retrieval over one pair is R@k = 1 by construction)
    shard = str(synth_data["root"] / "val" / "shard-000000.tar")
    for limit in ("1", "0", "-1"):
        with pytest.raises(SystemExit) as info:
            main(["eval", str(micro_bundle), "--val", shard, "--limit", limit, "--device", "cpu"])
        assert info.value.code == 2 and "--limit: must be at least 2" in capsys.readouterr().err


def test_quickstart_checks_its_whole_configuration_before_training(synth_data, tmp_path, capsys):
    """`quickstart --set data.val=null` trained for minutes, then failed at its evaluation summary."""
    out = tmp_path / "qs"
    for bad in ("data.val=null", "data.zeroshot=null", f"data.val={tmp_path / 'missing.tar'}"):
        args = ["quickstart", "--data", str(synth_data["root"]), "--out", str(out), "--no-serve", "--set", bad]
        assert main(args) == 1, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("clipforge: error: "), err
        assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()  # no step was taken
    assert main(["quickstart", "--data", str(synth_data["root"]), "--out", str(out), "--port", "0"]) == 1
    err = capsys.readouterr().err  # the serve step's settings are checked before the training too
    assert err == "clipforge: error: --port: Input should be greater than or equal to 1, got 0\n", err


def test_quickstart_checks_its_arguments_before_synthesizing_the_data(tmp_path, capsys):
    """A typo in --set (or a bad --port) cost the 20,000-image synthesis before the one-line error."""
    data = tmp_path / "synth"
    for bad in (["--set", "train.lr=abc"], ["--set", "train.batch_size=0"], ["--port", "70000"]):
        assert main(["quickstart", "--data", str(data), "--out", str(tmp_path / "qs"), "--no-serve", *bad]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("clipforge: error: "), err
        assert not data.exists(), bad


def test_training_checks_its_held_out_and_zero_shot_sets_before_the_first_step(synth_data, tmp_path, capsys):
    run = tmp_path / "run"
    for bad, said in (
        (f"data.val={tmp_path}/nope-{{0..3}}.tar", "data.val: none of the 4 shard file(s)"),
        (f"data.zeroshot={tmp_path}", "needs at least 2 class folders"),
    ):
        args = ["train", "smoke"] + [
            x for s in [f"out_dir={run}", f"data.train=['{synth_data['train']}']", bad] for x in ("--set", s)
        ]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err
        assert not (run / "checkpoints").exists()


def test_data_synth_refuses_counts_below_one(tmp_path, capsys):
    import pytest

    for flag in ("--train=-5", "--shard-size=0", "--val=0", "--per-class=-1"):
        with pytest.raises(SystemExit) as exit_:
            main(["data", "synth", str(tmp_path / "s"), flag])
        assert exit_.value.code == 2
        assert "must be at least 1" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "s").exists()


def test_quickstart_serves_through_a_function_with_its_settings(tmp_path):
    """The serve step gets settings, not a made-up command line; a missing bundle shows that `serve` got as far
    as its preflight."""
    import pytest

    from clipforge.cli import quickstart_settings
    from clipforge.service.cli import serve
    from clipforge.service.settings import Settings

    settings = quickstart_settings(Settings(host="127.0.0.1", port=1), tmp_path / "nope", tmp_path / "idx")
    assert (settings.bundle, settings.index, settings.port, settings.workers) == (
        tmp_path / "nope",
        tmp_path / "idx",
        1,
        1,
    )
    with pytest.raises(ValueError, match="not a clipforge bundle"):
        serve(settings, log_level="warning", access_log=False)


def test_eval_with_a_subsets_file_that_is_not_a_mapping_is_one_line(synth_data, micro_bundle, tmp_path, capsys):
    import shutil

    zeroshot = tmp_path / "zeroshot"
    shutil.copytree(synth_data["zeroshot"], zeroshot)
    for text in ('["red circle"]', '{"heldout": "red circle"}', "{not json"):
        (zeroshot / "subsets.json").write_text(text)
        assert main(["eval", str(micro_bundle), "--zeroshot", str(zeroshot), "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "subsets.json" in err, err


@pytest.mark.parametrize(
    ("subsets", "said", "shown", "not_shown"),
    [
        ({"heldout": ["red circle", "red_square"]}, "subset 'heldout' names 1 class(es) not among", ["red_square"], []),
        ({"heldout": ["red circle"], "typos": ["a", "b", "c", "d"]}, "names 4 class(es)", ["a", "b", "c"], ["d"]),
        ({"heldout": []}, "subset 'heldout' lists no classes", [], []),
    ],
    ids=["folder-spelling", "first-three-of-four", "empty"],
)
def test_a_subset_naming_unknown_classes_is_refused_not_dropped(
    synth_data, micro_bundle, tmp_path, capsys, subsets, said, shown, not_shown
):
    """A subset name that matched no class was silently dropped: `zeroshot_top1_heldout` came out over fewer
    classes than listed, or not at all. Now `eval` and `train` refuse it in one line, before any model load
    or training step."""
    import shutil

    zeroshot = tmp_path / "zeroshot"
    shutil.copytree(synth_data["zeroshot"], zeroshot)
    (zeroshot / "subsets.json").write_text(json.dumps(subsets))
    assert main(["eval", str(micro_bundle), "--zeroshot", str(zeroshot), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("clipforge: error: ") and said in err, err
    assert all(repr(m) in err for m in shown) and not any(repr(m) in err for m in not_shown), err
    run = tmp_path / "run"
    args = ["train", "smoke"] + [
        x
        for s in [f"out_dir={run}", f"data.train=['{synth_data['train']}']", f"data.zeroshot={zeroshot}"]
        for x in ("--set", s)
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err, err
    assert not (run / "checkpoints").exists()


def test_a_subsets_file_of_known_classes_reports_its_figure(synth_data, micro_bundle, tmp_path, capsys):
    import shutil

    zeroshot = tmp_path / "zeroshot"
    shutil.copytree(synth_data["zeroshot"], zeroshot)
    (zeroshot / "subsets.json").write_text(json.dumps({"reds": ["red circle", "red square"]}))
    assert main(["eval", str(micro_bundle), "--zeroshot", str(zeroshot), "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.0 <= out["zeroshot_top1_reds"] <= 1.0 and "zeroshot_top1_heldout" not in out


def test_report_on_malformed_metrics_or_config_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    good = json.dumps({"step": 1, "loss": 2.0}) + "\n"
    for metrics, config, said in (
        (good + "[1, 2]\n", None, "metrics.jsonl line 2 is not a metrics record"),
        (good + '{"step": null}\n', None, "metrics.jsonl line 2 is not a metrics record"),
        (good + '{"step": 3, "eval": [1]}\n', None, "metrics.jsonl line 2 is not a metrics record"),
        ("garbage{{\n" + good, None, "metrics.jsonl line 1 is not JSON"),
        ("", None, "metrics.jsonl holds no metrics records"),
        ("garbage{{", None, "metrics.jsonl holds no metrics records"),
        (good, "data: [unclosed\n", "config.yaml is not valid YAML"),
        (good, "- a list\n", "config.yaml is not a clipforge config"),
    ):
        (run / "metrics.jsonl").write_text(metrics)
        (run / "config.yaml").unlink(missing_ok=True)
        if config is not None:
            (run / "config.yaml").write_text(config)
        assert main(["report", str(run), "--no-examples"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err
    (run / "metrics.jsonl").write_text(good + '{"step": 2, "lo')  # a torn last line (a killed run) is fine
    (run / "config.yaml").unlink()
    assert main(["report", str(run), "--no-examples"]) == 0


def test_a_training_error_starts_its_own_line_after_the_progress_bar(synth_data, tmp_path, capsys):
    """The error was glued to the open bar (`0%| | 0/2 [...]clipforge: error: ...`)."""
    args = [
        "train",
        "smoke",
        "--set",
        f"out_dir={tmp_path / 'run'}",
        "--set",
        f"data.train=['{synth_data['train']}']",
        "--set",
        "data.caption_key=json:nofield",
        "--set",
        "data.val=null",
        "--set",
        "data.zeroshot=null",
    ]
    assert main(args) == 1
    last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
    assert last.startswith("clipforge: error: ") and "no usable samples" in last, last


def test_a_diverging_run_is_one_line_not_a_traceback(synth_data, tmp_path, capsys):
    """NonFiniteLossError is a FloatingPointError: the CLI printed its traceback instead of the reason."""
    args = ["train", "smoke", "--set", f"out_dir={tmp_path / 'run'}", "--set", f"data.train=['{synth_data['train']}']"]
    args += ["--set", "data.val=null", "--set", "data.zeroshot=null", "--set", "optim.lr=1e30"]
    args += ["--set", "train.samples=320"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("clipforge: error: loss") and "the last checkpoint is intact" in last, last


def test_an_error_in_a_data_worker_process_is_one_line(tmp_path, capsys):
    """An error raised in a DataLoader worker reaches the CLI with the worker's traceback in its text."""
    broken = tmp_path / "broken.tar"
    broken.write_bytes(bytes(range(256)) * 80)  # not a tar archive
    args = ["train", "smoke", "--set", f"out_dir={tmp_path / 'run'}", "--set", f"data.train=['{broken}']"]
    args += ["--set", "data.val=null", "--set", "data.zeroshot=null", "--set", "data.workers=1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "DataLoader worker" not in err, err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("clipforge: error: epoch 0: no usable samples in 1 shard(s)"), last


def test_a_file_that_is_not_a_checkpoint_is_named_as_such(synth_data, tmp_path, capsys):
    """torch.load of a text file raised KeyError: '104', and the error read '(KeyError: 104)'."""
    note = tmp_path / "notes.txt"
    note.write_text("hello, not a checkpoint\n")
    args = ["train", "smoke", "--set", f"out_dir={tmp_path / 'run'}", "--set", f"data.train=['{synth_data['train']}']"]
    for command in (args + ["--resume", str(note)], ["export", str(note), str(tmp_path / "bundle")]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "notes.txt is not a readable checkpoint (not a PyTorch file" in err, err


def test_quickstart_no_serve_runs_every_step_and_says_how_to_serve_what_it_made(synth_data, tmp_path, capsys):
    import shutil

    data = tmp_path / "synth"
    shutil.copytree(synth_data["root"], data)  # the fusion step adds its question set to the data folder
    out = tmp_path / "qs"
    tiny = ["--set", "model.arch=cf-micro-vit", "--set", "train.samples=64", "--set", "train.batch_size=32"]
    assert main(["quickstart", "--data", str(data), "--out", str(out), "--no-serve", *tiny]) == 0
    lines = capsys.readouterr().out.splitlines()
    bundle_line = next(line for line in lines if line.startswith("  bundle: "))
    assert "trained in fp32" in bundle_line or "trained in bf16" in bundle_line
    last = lines[-1]  # it used to print "[6/6] serving on http://..." and curl examples, then exit
    assert last.startswith("[6/6] not serving (--no-serve); to serve it: clipforge serve --bundle ")
    words = shlex.split(last.split("to serve it: ")[1])
    assert words[:2] == ["clipforge", "serve"]
    flags = dict(zip(words[2::2], words[3::2], strict=True))
    assert (out / "bundle").samefile(flags["--bundle"]) and (out / "index").samefile(flags["--index"])
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "8000"
    heads = [words[i + 1] for i, w in enumerate(words) if w == "--head"]
    assert len(heads) == 2 and all((Path(h) / "head.json").is_file() for h in heads)
    # run again on the finished run: nothing is retrained, and it says so rather than "at 0 samples/s"
    assert main(["quickstart", "--data", str(data), "--out", str(out), "--no-serve", *tiny]) == 0
    again = capsys.readouterr().out
    assert "this run had finished, no new steps" in again and "0 samples/s" not in again


def test_eval_of_shards_with_no_usable_pair_says_why(micro_bundle, tmp_path, capsys):
    """It said only "no usable image-caption pairs in X", whether X was empty, not a tar, or all bad images."""
    import io
    import tarfile

    empty, broken, bad_images = tmp_path / "empty.tar", tmp_path / "broken.tar", tmp_path / "bad.tar"
    tarfile.open(empty, "w").close()
    broken.write_bytes(b"x")
    with tarfile.open(bad_images, "w") as tar:
        for name, data in (("a.jpg", b"not an image"), ("a.txt", b"a red circle")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    for shard, why in ((empty, "it holds no samples"), (broken, "broken_member: 1"), (bad_images, "bad_image: 1")):
        assert main(["eval", str(micro_bundle), "--val", str(shard), "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert err == f"clipforge: error: no usable image-caption pairs in {shard} ({why})\n", err
