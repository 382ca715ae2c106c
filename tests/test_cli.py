"""The `clipforge` command: a usage mistake in any subcommand is one line on stderr and exit code 2."""

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
