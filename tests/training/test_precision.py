import json

import pytest
import torch

from clipforge.encoders import device
from clipforge.encoders.model import build_model, resolve_model_config
from clipforge.training import precision
from clipforge.training.distributed import DistInfo
from clipforge.training.loop import train
from clipforge.training.setup import Runtime
from tests.training.test_train import smoke_cfg

CPU = torch.device("cpu")


def runtime(prec: str) -> Runtime:
    return Runtime(CPU, prec, DistInfo(), torch.contiguous_format)


def test_the_step_probe_times_both_precisions_and_leaves_the_model_and_random_state_alone():
    _, model_cfg = resolve_model_config("cf-micro-vit")
    model = build_model(model_cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    times = precision.step_seconds(model, model_cfg, batch=2, rounds=1)
    assert set(times) == {"fp32", "bf16"} and all(t > 0 for t in times.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())  # the run's augmentation stream is not shifted


def test_bf16_is_chosen_only_when_the_step_is_clearly_faster():
    assert precision.faster({"fp32": 1.0, "bf16": 0.5}) == "bf16"
    assert precision.faster({"fp32": 1.0, "bf16": 0.9}) == "fp32"  # within noise of fp32: not worth bf16's error
    assert precision.faster({"fp32": 1.0, "bf16": 2.0}) == "fp32"  # fast matmuls, slow step (cf-tiny-vit on AMX)


def test_only_auto_on_a_cpu_with_fast_bf16_matmuls_is_measured(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("measured")

    monkeypatch.setattr(precision, "step_seconds", boom)
    model, model_cfg = torch.nn.Linear(1, 1), {}
    assert precision.settle_cpu_precision("bf16", runtime("bf16"), model, model_cfg).precision == "bf16"  # asked for
    assert precision.settle_cpu_precision("auto", runtime("fp32"), model, model_cfg).precision == "fp32"  # AVX2
    monkeypatch.setattr(precision, "step_seconds", lambda *a, **k: {"fp32": 1.0, "bf16": 2.0})
    assert precision.settle_cpu_precision("auto", runtime("bf16"), model, model_cfg).precision == "fp32"
    monkeypatch.setattr(precision, "step_seconds", lambda *a, **k: {"fp32": 2.0, "bf16": 1.0})
    assert precision.settle_cpu_precision("auto", runtime("bf16"), model, model_cfg).precision == "bf16"


def test_a_resumed_run_keeps_its_precision_unless_bf16_is_slow_here(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("measured")

    monkeypatch.setattr(precision, "step_seconds", boom)
    model, model_cfg = torch.nn.Linear(1, 1), {}
    assert precision.settle_cpu_precision("auto", runtime("bf16"), model, model_cfg, resumed="fp32").precision == "fp32"
    assert precision.settle_cpu_precision("auto", runtime("bf16"), model, model_cfg, resumed="bf16").precision == "bf16"
    # a bf16 run resumed on a CPU that emulates bf16 (~100x slower) goes on in fp32
    assert precision.settle_cpu_precision("auto", runtime("fp32"), model, model_cfg, resumed="bf16").precision == "fp32"


def test_resuming_reads_the_precision_from_the_checkpoint_and_does_not_measure_again(synth_data, tmp_path, monkeypatch):
    monkeypatch.setattr(device, "cpu_bf16_is_fast", lambda: True)
    calls = []
    monkeypatch.setattr(precision, "step_seconds", lambda *a, **k: calls.append(1) or {"fp32": 2.0, "bf16": 1.0})
    run = tmp_path / "run"
    args = ("train.precision=auto", "data.val=", "data.zeroshot=", "train.ckpt_every=1")
    assert train(smoke_cfg(synth_data, run, "train.samples=32", *args), progress=False)["precision"] == "bf16"
    monkeypatch.setattr(precision, "step_seconds", lambda *a, **k: calls.append(2) or {"fp32": 1.0, "bf16": 2.0})
    summary = train(smoke_cfg(synth_data, run, "train.samples=64", *args), resume="auto", progress=False)
    assert calls == [1] and summary["precision"] == "bf16"  # not switched half-way by a second, noisy measurement


def test_a_model_that_cannot_step_in_bf16_trains_in_fp32(monkeypatch, caplog):
    def no_kernel(*a, **k):
        raise RuntimeError("\"some_op\" not implemented for 'BFloat16'")

    monkeypatch.setattr(precision, "step_seconds", no_kernel)
    assert precision.settle_cpu_precision("auto", runtime("bf16"), torch.nn.Linear(1, 1), {}).precision == "fp32"
    assert "the bf16 step failed" in caplog.text and "BFloat16" in caplog.text


@pytest.mark.parametrize(
    "step_times, chosen", [({"fp32": 1.0, "bf16": 2.0}, "fp32"), ({"fp32": 2.0, "bf16": 1.0}, "bf16")]
)
def test_a_run_trains_in_the_precision_its_own_step_is_faster_in_and_records_it(
    synth_data, tmp_path, monkeypatch, step_times, chosen
):
    monkeypatch.setattr(device, "cpu_bf16_is_fast", lambda: True)  # as on an AMX / AVX512-BF16 CPU
    monkeypatch.setattr(precision, "step_seconds", lambda *a, **k: step_times)
    run = tmp_path / "run"
    summary = train(
        smoke_cfg(synth_data, run, "train.samples=32", "train.precision=auto", "data.val=", "data.zeroshot="),
        progress=False,
    )
    assert summary["precision"] == chosen
    assert json.loads((run / "bundle" / "bundle.json").read_text())["provenance"]["precision"] == chosen


def test_under_torchrun_every_rank_trains_in_rank_0s_choice(tmp_path):
    """Ranks in different precisions would all-reduce gradients of different models."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = root / "tests" / "training" / "ddp_precision.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*cmd, str(tmp_path)], capture_output=True, text=True, env=env, timeout=240, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["bf16", "bf16"]
