"""The `clipforge` command: a usage mistake in any subcommand is one line on stderr and exit code 2; a path
that cannot be used is one line naming the argument it came from."""

import os
import sys
from pathlib import Path

import pytest

from clipforge.cli import main

MISTAKES = [
    ["serve", "--port", "abc"],
    ["index", "search", "idx", "--id", "abc"],
    ["index", "remove", "idx", "abc"],
    ["data", "synth", "out", "--train", "abc"],
    ["fuse", "compare", "cfg", "--bootstrap", "abc"],
    ["train"],
    ["no-such-command"],
]


@pytest.mark.parametrize("argv", MISTAKES, ids=lambda a: " ".join(a))
def test_a_usage_mistake_is_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("clipforge") and "error: " in err and "--help" in err, err


def test_data_synth_refuses_a_count_that_is_a_typo(capsys):
    """An 18-line OverflowError traceback, after an empty shard had been written."""
    with pytest.raises(SystemExit) as info:
        main(["data", "synth", "never-written", "--train", "99999999999999999999"])
    assert info.value.code == 2 and "must be at most" in capsys.readouterr().err


SYNTH_TINY = ["--train", "1", "--val", "1", "--per-class", "1"]
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False

# (argv with {file}, {dir}, {missing}, {ro} (a directory this user cannot write), {run}, {bundle}, ...; the line)
PATH_MISTAKES = [
    (["data", "synth", "{file}", *SYNTH_TINY], "out: not a directory: {file}"),
    (["data", "synth", "{file}/sub", *SYNTH_TINY], "out: not a directory: {file}"),
    (["data", "shards", "{zeroshot}", "{file}"], "out: exists and is not a directory: {file}"),
    (["report", "{run}", "--out", "{dir}"], "--out: is a directory, not a file: {dir}"),
    (["report", "{run}", "--out", "{missing}/deep/r.html"], "--out: no such directory: {missing}"),
    (["bundle", "export", "{bundle}", "--open-clip", "{file}"], "--open-clip: exists and is not a directory: {file}"),
    (
        ["bundle", "import", "{tmp}/b", "--arch", "cf-micro-vit", "--weights", "{missing}"],
        "--weights: no such file or directory: {missing}",
    ),
    (
        ["bundle", "import", "{tmp}/b", "--arch", "cf-micro-vit", "--weights", "{dir}"],
        "--weights: is a directory, not a file: {dir}",
    ),
]
UNREADABLE = [  # root reads and writes everything: these run as any other user (CI)
    (["data", "synth", "{ro}/out", *SYNTH_TINY], "out: cannot create files in {ro}: permission denied"),
    (["report", "{run}", "--out", "{ro}/r.html"], "--out: cannot create files in {ro}: permission denied"),
    (["train", "{secret}"], "config: permission denied: {secret}"),
    (["bundle", "info", "{locked}"], "bundle: permission denied: {locked}/model.safetensors"),
    (["report", "{locked_run}"], "run_dir: permission denied: {locked_run}/metrics.jsonl"),
    (["index", "info", "{locked_index}"], "index: permission denied: {locked_index}/manifest.json"),
    (
        ["bundle", "import", "{tmp}/b", "--arch", "cf-micro-vit", "--weights", "{secret}"],
        "--weights: permission denied: {secret}",
    ),
    (
        ["train", "smoke", "--resume", "{secret}", "--set", "out_dir={tmp}/run", "--set", "data.train=['{shard}']"],
        "--resume: permission denied: {secret}",
    ),
    (
        ["train", "smoke", "--set", "out_dir={ro}/run", "--set", "data.train=['{shard}']"],
        "out_dir: cannot create files in {ro}: permission denied",
    ),
]


def case_ids(cases: list[tuple[list[str], str]]) -> list[str]:
    """`report --out: no such directory`: the command and the start of the line it must print."""
    return [f"{' '.join(a for a in argv[:2] if '{' not in a)} {said.rsplit(':', 1)[0]}" for argv, said in cases]


@pytest.fixture
def paths(tmp_path, micro_bundle, synth_data):
    """Every kind of path the cases name, made in tmp_path ({ro} and the locked ones: modes a non-root user obeys)."""
    import shutil

    (tmp_path / "a-file").write_text("not a directory\n")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "ro").mkdir(mode=0o555)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    shutil.copytree(run, tmp_path / "locked-run")
    (tmp_path / "secret.yaml").write_text("model: {arch: cf-micro-vit}\n")
    shutil.copytree(micro_bundle, tmp_path / "locked-bundle")
    (tmp_path / "locked-index").mkdir()
    (tmp_path / "locked-index" / "manifest.json").write_text("{}")
    for locked in (
        "secret.yaml",
        "locked-bundle/model.safetensors",
        "locked-run/metrics.jsonl",
        "locked-index/manifest.json",
    ):
        (tmp_path / locked).chmod(0)
    yield {
        "tmp": tmp_path,
        "file": tmp_path / "a-file",
        "dir": tmp_path / "a-dir",
        "missing": tmp_path / "missing",
        "ro": tmp_path / "ro",
        "run": run,
        "locked_run": tmp_path / "locked-run",
        "secret": tmp_path / "secret.yaml",
        "bundle": micro_bundle,
        "locked": tmp_path / "locked-bundle",
        "locked_index": tmp_path / "locked-index",
        "shard": synth_data["root"] / "train" / "shard-000000.tar",
        "zeroshot": synth_data["zeroshot"],
    }
    (tmp_path / "ro").chmod(0o755)  # so that pytest can clean up


def check_path_mistake(argv, said, paths, capsys):
    """Python's bare `[Errno 13] Permission denied: 'x'` was the whole line: now it names the argument."""
    from clipforge.cli import main

    assert main([a.format(**paths) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err == f"clipforge: error: {said.format(**paths)}\n", err


@pytest.mark.parametrize(("argv", "said"), PATH_MISTAKES, ids=case_ids(PATH_MISTAKES))
def test_a_path_mistake_names_the_argument_not_an_errno(argv, said, paths, capsys):
    check_path_mistake(argv, said, paths, capsys)


@pytest.mark.parametrize(("argv", "said"), UNREADABLE, ids=case_ids(UNREADABLE))
def test_a_permission_mistake_names_the_argument_not_an_errno(argv, said, paths, capsys):
    if not ROOT:
        return check_path_mistake(argv, said, paths, capsys)
    # root reads and writes every file: the command runs without the two capabilities that let it (CI runs
    # as root, so these cases ran nowhere before)
    import shutil
    import subprocess

    if shutil.which("setpriv") is None:
        pytest.skip("root, and no setpriv (util-linux) to drop CAP_DAC_OVERRIDE with")
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    cmd = [*drop, sys.executable, "-m", "clipforge", *[a.format(**paths) for a in argv]]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert (done.returncode, done.stderr) == (1, f"clipforge: error: {said.format(**paths)}\n")


def test_error_line_keeps_the_codes_own_messages_and_words_the_bare_ones(tmp_path):
    import errno

    from clipforge.cli import build_parser
    from clipforge.cliutil import error_line

    parser = build_parser()
    args = parser.parse_args(["export", str(tmp_path / "run"), str(tmp_path / "out")])
    own = FileNotFoundError(f"no checkpoint file {tmp_path}")
    assert error_line(own, parser, args) == str(own)
    assert error_line(OSError(errno.ENOSPC, "No space left on device"), parser, args) == "no space left on device"
    try:
        os.stat(987654)  # a file descriptor in place of a path: os.fsdecode raised TypeError in the handler
    except OSError as exn:
        assert error_line(exn, parser, args) == "bad file descriptor"
    tmp = tmp_path / ".out.x1y2"  # an atomic write's temporary sibling belongs to its target
    assert error_line(PermissionError(errno.EACCES, "Permission denied", str(tmp)), parser, args).startswith("out: ")
    inside = tmp_path / "run" / "checkpoints" / "step-00000002.pt"
    said = error_line(PermissionError(errno.EACCES, "Permission denied", str(inside)), parser, args)
    assert said == f"source: permission denied: {inside}"
    assert error_line(ValueError("x"), parser, args) == "x"


def test_logged_warnings_are_one_line_in_the_clis_form(synth_data, tmp_path):
    """Warnings from `logging` read `WARNING clipforge.training.records: ...`, those from `warnings`
    `clipforge: warning: ...`: one form now, the errors' form. (A subprocess: pytest owns the root logger.)"""
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')  # an earlier run's: set aside, with a warning
    sets = [f"out_dir={run}", f"data.train=['{synth_data['train']}']", "data.val=null", "data.zeroshot=null"]
    cmd = [sys.executable, "-m", "clipforge", "train", "smoke", *[a for s in sets for a in ("--set", s)]]
    done = subprocess.run([*cmd, "--set", "train.samples=16"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "kept as metrics.1.jsonl" in line]
    assert len(lines) == 1 and lines[0].startswith(f"clipforge: warning: {run} held an earlier run's records"), lines
    assert "WARNING" not in done.stderr


def test_a_logged_exception_keeps_its_traceback_in_the_one_line_form():
    """The service logs an unexpected error with its traceback (log.exception); the CLI's one-line formatter
    printed the message alone, so a 500 left nothing to debug it with."""
    import logging

    from clipforge.cli import OneLineFormatter

    try:
        raise RuntimeError("deep inside")
    except RuntimeError:
        record = logging.LogRecord("clipforge.service.errors", logging.ERROR, __file__, 1, "unhandled error", (), None)
        record.exc_info = sys.exc_info()
    text = OneLineFormatter().format(record)
    assert text.startswith("clipforge: error: unhandled error\nTraceback (most recent call last):")
    assert text.rstrip().endswith("RuntimeError: deep inside")
    plain = logging.LogRecord("x", logging.WARNING, __file__, 1, "careful: %s", ("x",), None)
    assert OneLineFormatter().format(plain) == "clipforge: warning: careful: x"
