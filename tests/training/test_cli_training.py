"""The training side of the `clipforge` command on bad input: exit 1 with one line, or a warning and exit 0."""

import json

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
    assert main(["eval", str(micro_bundle), "--val", str(synth_data["root"] / "val" / "shard-000000.tar"),
                 "--limit", "1", "--device", "cpu"]) == 0  # fmt: skip
