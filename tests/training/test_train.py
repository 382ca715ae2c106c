import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from clipforge.encoders.bundle import load_bundle, save_bundle
from clipforge.training.checkpoint import latest_valid_checkpoint, list_checkpoints
from clipforge.training.config import load_config
from clipforge.training.export import export_bundle
from clipforge.training.loop import train
from clipforge.training.loss import NonFiniteLossError
from tests.training.test_data import messy_shard


def smoke_cfg(synth_data, out: Path, *extra: str):
    return load_config(
        "smoke",
        [
            f"out_dir={out}",
            f"data.train=['{synth_data['train']}']",
            f"data.val={synth_data['val']}",
            f"data.zeroshot={synth_data['zeroshot']}",
            *extra,
        ],
    )


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_smoke_run_trains_evaluates_and_exports(synth_data, tmp_path):
    run = tmp_path / "run"
    summary = train(smoke_cfg(synth_data, run, "train.samples=320"), progress=False)
    assert summary["steps"] == 20
    records = read_metrics(run)
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]  # it learns something on the easy synthetic set
    final = records[-1]["eval"]
    assert {"zeroshot_top1", "zeroshot_top5", "image_to_text_R@1", "text_to_image_R@10"} <= set(final)
    assert final["zeroshot_images"] == 60 and len(final["zeroshot_per_class"]) == 30
    assert (run / "config.yaml").is_file() and (run / "bundle" / "bundle.json").is_file()
    meta = json.loads((run / "bundle" / "bundle.json").read_text())
    assert meta["provenance"]["steps"] == 20 and meta["provenance"]["samples_seen"] == 320
    assert len(list_checkpoints(run)) <= 3  # keep_ckpts
    # export from the run directory equals the bundle written at the end of training
    fp = export_bundle(run, tmp_path / "exported")
    assert fp == summary["fingerprint"]
    b1, b2 = load_bundle(run / "bundle"), load_bundle(tmp_path / "exported")
    torch.testing.assert_close(b1.encode_texts(["a red circle"]), b2.encode_texts(["a red circle"]), atol=0, rtol=0)


def test_bundle_embeddings_equal_the_trained_model(synth_data, tmp_path):
    run = tmp_path / "run"
    train(smoke_cfg(synth_data, run, "train.samples=64"), progress=False)
    _, ckpt = latest_valid_checkpoint(run)
    b = load_bundle(run / "bundle", precision="fp32")
    from clipforge.encoders.model import build_model

    model = build_model(ckpt["model_cfg"]).eval()
    model.load_state_dict(ckpt["model"])
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            b.encode_images(pixels), model.encode_image(pixels, normalize=True), atol=1e-6, rtol=0
        )


def test_bf16_autocast_trains_on_cpu(synth_data, tmp_path):
    summary = train(
        smoke_cfg(
            synth_data,
            tmp_path / "bf16",
            "train.precision=bf16",
            "train.samples=48",
            "train.batch_size=8",
            "data.zeroshot=null",
            "data.val=null",
        ),
        progress=False,
    )
    assert summary["steps"] == 6
    losses = [r["loss"] for r in read_metrics(tmp_path / "bf16") if "loss" in r]
    assert all(map(lambda x: x == x and x < 10, losses))  # finite


def test_siglip_loss_trains(synth_data, tmp_path):
    summary = train(
        smoke_cfg(
            synth_data, tmp_path / "sig", "loss.kind=siglip", "train.samples=64", "data.zeroshot=null", "data.val=null"
        ),
        progress=False,
    )
    meta = json.loads((tmp_path / "sig" / "bundle" / "bundle.json").read_text())
    assert summary["steps"] == 4 and meta["loss"] == "siglip" and meta["logit_bias"] is not None
    assert load_bundle(tmp_path / "sig" / "bundle").loss == "siglip"


def test_messy_shard_trains_through_and_counts_skips(tmp_path):
    shard = tmp_path / "messy.tar"
    expected = messy_shard(shard)
    cfg = load_config(
        "smoke",
        [
            f"out_dir={tmp_path / 'run'}",
            f"data.train=['{shard}']",
            "train.batch_size=4",
            "train.samples=24",
            "data.sample_shuffle=0",
        ],
    )
    summary = train(cfg, progress=False)
    assert summary["steps"] == 6
    for reason, n in expected.items():  # each pass over the shard skips the same samples
        assert summary["skipped"][reason] % n == 0 and summary["skipped"][reason] >= n
    logged = [r for r in read_metrics(tmp_path / "run") if "skipped" in r]
    assert logged[-1]["skipped"] == summary["skipped"]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(synth_data, tmp_path):
    """The step does not sync with the device to look at its loss: a divergence is found at the next log,
    checkpoint or evaluation step, before anything is written from the diverged model. Here the update of
    step 6 (lr 1e30) blows the weights up; step 6 logged a finite loss, step 8 (the next log step) finds it."""
    run = tmp_path / "run"
    train(smoke_cfg(synth_data, run, "train.samples=80"), progress=False)  # 5 steps, checkpoint at 5
    before = {p.name: p.read_bytes() for p in list_checkpoints(run)}
    with pytest.raises(NonFiniteLossError, match=r"steps 7\.\.8: stopping; the last checkpoint is intact") as info:
        train(smoke_cfg(synth_data, run, "train.samples=320", "optim.lr=1e30"), resume="auto", progress=False)
    assert "\n" not in str(info.value)
    assert all(r["loss"] == r["loss"] for r in read_metrics(run) if "loss" in r)  # no NaN was logged
    after = {p.name: p.read_bytes() for p in list_checkpoints(run)}
    assert before.items() <= after.items()
    path, ckpt = latest_valid_checkpoint(run)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def one_pair_shard(synth_data, path: Path) -> Path:
    """The first sample of the held-out shard, alone in a shard of its own."""
    with tarfile.open(synth_data["root"] / "val" / "shard-000000.tar") as src, tarfile.open(path, "w") as dst:
        for member in src.getmembers():
            if member.name.startswith("00000000."):
                dst.addfile(member, src.extractfile(member))
    return path


def test_a_final_evaluation_that_cannot_be_computed_still_ends_with_bundle_and_checkpoint(synth_data, tmp_path, caplog):
    """One held-out pair: CCA and uniformity cannot be computed ("SVD did not converge" killed the run at its
    final evaluation, before the bundle). Now: exit 0, bundle and last checkpoint written, a warning logged."""
    from clipforge.cli import main

    run, val = tmp_path / "run", one_pair_shard(synth_data, tmp_path / "one.tar")
    args = [
        "train",
        "smoke",
        "--set",
        f"out_dir={run}",
        "--set",
        f"data.train=['{synth_data['train']}']",
        "--set",
        f"data.val={val}",
        "--set",
        "train.samples=32",
    ]
    assert main(args) == 0
    assert "evaluation at step 2: diagnostics uniformity_image, uniformity_text, cca_top not computable" in caplog.text
    assert (run / "bundle" / "bundle.json").is_file()
    assert int(latest_valid_checkpoint(run)[1]["step"]) == 2
    final = read_metrics(run)[-1]
    assert final["final"] and final["eval"]["retrieval_pairs"] == 1 and final["eval"]["diag_cca_top"] is None
    assert final["eval"]["warnings"] == [
        "diagnostics uniformity_image, uniformity_text, cca_top not computable from 1 pair(s) (need at least 2)"
    ]


def test_an_evaluation_that_fails_keeps_the_weights_and_says_why(synth_data, tmp_path, monkeypatch, caplog):
    """Whatever goes wrong in an evaluation, the run goes on and ends with its bundle: evaluation is a diagnostic."""
    import clipforge.training.loop as loop

    def broken(*_args, **_kwargs):
        raise RuntimeError("evaluator exploded")

    monkeypatch.setattr(loop, "retrieval_eval", broken)
    run = tmp_path / "run"
    summary = train(smoke_cfg(synth_data, run, "train.samples=64", "eval.every=2"), progress=False)
    assert (run / "bundle" / "bundle.json").is_file() and summary["fingerprint"]
    errors = [r for r in read_metrics(run) if "eval_error" in r]
    assert [r["step"] for r in errors] == [2, 4] and errors[-1]["final"]
    assert "RuntimeError: evaluator exploded" in summary["eval_error"]
    assert "evaluation failed at step 2" in caplog.text


def test_kill_9_then_resume_auto_finishes(synth_data, tmp_path):
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "clipforge",
        "-v",
        "train",
        "smoke",
        "--resume",
        "auto",
        "--set",
        f"out_dir={run}",
        "--set",
        f"data.train=['{synth_data['train']}']",
        "--set",
        "train.samples=4000",
        "--set",
        "train.ckpt_every=3",
        "--set",
        "data.workers=1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(run)) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data workers, mid-step
    proc.wait()
    killed_at = int(latest_valid_checkpoint(run)[1]["step"])
    assert 0 < killed_at < 250
    done = subprocess.run(
        args[:-2] + ["--set", "train.samples=" + str(16 * (killed_at + 6))],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"at step {killed_at}" in done.stderr  # resumed, not restarted
    assert int(latest_valid_checkpoint(run)[1]["step"]) == killed_at + 6
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps[-1] == killed_at + 6
    assert steps == sorted(set(steps))  # what the killed run logged after its checkpoint is not drawn twice


def test_a_fresh_start_keeps_the_earlier_runs_metrics_aside(synth_data, tmp_path, caplog, capsys):
    """`--resume auto` over checkpoints that are all unreadable starts from step 0 (right), but appended to the
    earlier run's metrics.jsonl: the report drew two runs as one. The earlier file is now kept as
    metrics.1.jsonl (then .2, ...), with a warning naming it, and the report reads the new run alone."""
    from clipforge.cli import main

    run, quick = tmp_path / "run", ("data.val=null", "data.zeroshot=null")
    train(smoke_cfg(synth_data, run, "train.samples=80", *quick), progress=False)  # steps 1-5, logged at 2, 4, 5
    first = (run / "metrics.jsonl").read_bytes()
    assert list_checkpoints(run)
    for ckpt in list_checkpoints(run):  # torn by a full disk, say
        ckpt.write_bytes(ckpt.read_bytes()[:200])
    summary = train(smoke_cfg(synth_data, run, "train.samples=64", *quick), resume="auto", progress=False)
    assert summary["steps"] == 4
    assert "is unreadable" in caplog.text and "kept as metrics.1.jsonl" in caplog.text
    assert (run / "metrics.1.jsonl").read_bytes() == first
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [2, 4]
    assert main(["report", str(run), "--no-examples"]) == 0
    assert "2 logged steps, 1 evaluations" in (run / "report.html").read_text()
    second = (run / "metrics.jsonl").read_bytes()
    (run / "tensorboard").mkdir(exist_ok=True)  # (written when tensorboard is installed): its events go too
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"earlier run")
    train(smoke_cfg(synth_data, run, "train.samples=32", *quick), progress=False)  # afresh on purpose: the same
    assert (run / "metrics.1.jsonl").read_bytes() == first and (run / "metrics.2.jsonl").read_bytes() == second
    assert (run / "tensorboard.2" / "events.out.tfevents.1").read_bytes() == b"earlier run"
    assert "kept as metrics.2.jsonl, tensorboard.2" in caplog.text
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [2]


def test_resume_drops_the_records_written_after_its_checkpoint(synth_data, tmp_path, caplog):
    """A run killed after logging steps past its last checkpoint, then resumed, logged those steps twice (and a
    crash can tear the last line): the report drew them twice. Resuming now rewinds metrics.jsonl to the step."""
    run, quick = tmp_path / "run", ("data.val=null", "data.zeroshot=null")
    cfg = smoke_cfg(synth_data, run, "train.samples=80", "train.log_every=1", "train.ckpt_every=2", *quick)
    train(cfg, progress=False)  # steps 1-5, checkpoints at 2, 4 and 5
    for ckpt in list_checkpoints(run)[1:]:  # as if killed after logging step 5 but before checkpoint 4 landed
        ckpt.unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.')  # torn mid-write
    summary = train(cfg, resume="auto", progress=False)
    assert summary["steps"] == 5 and "dropped 5 record(s) written after it" in caplog.text  # 3, 4, 5, final, torn
    records = read_metrics(run)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]
    assert sum(1 for r in records if r.get("final")) == 1


def test_a_fresh_start_keeps_the_earlier_runs_checkpoints_apart(synth_data, tmp_path):
    """Keeping the last K checkpoints goes by file name: a fresh run in the folder of a longer earlier run
    deleted its OWN checkpoints (the old ones sort after them), and `--resume auto` then took the old run's."""
    run, quick = tmp_path / "run", ("data.val=null", "data.zeroshot=null", "train.ckpt_every=2", "train.keep_ckpts=2")
    train(smoke_cfg(synth_data, run, "train.samples=96", *quick), progress=False)  # 6 steps: keeps 4 and 6
    earlier = [p.name for p in list_checkpoints(run)]
    train(smoke_cfg(synth_data, run, "train.samples=48", *quick), progress=False)  # afresh: 3 steps, 2 and 3
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002.pt", "step-00000003.pt"]
    assert (
        sorted(p.name for p in (run / "checkpoints.1").glob("step-*.pt"))
        == earlier
        == [
            "step-00000004.pt",
            "step-00000006.pt",
        ]
    )
    assert latest_valid_checkpoint(run)[1]["step"] == 3


def test_extending_a_finished_run_keeps_its_last_evaluation(synth_data, tmp_path):
    """Resuming a finished run with more samples dropped its final evaluation (at the checkpoint's step, not
    after it), and no later step evaluates that step again. Kept, as an ordinary evaluation."""
    run = tmp_path / "run"
    train(smoke_cfg(synth_data, run, "train.samples=80", "data.val=null"), progress=False)  # 5 steps
    train(smoke_cfg(synth_data, run, "train.samples=160", "data.val=null"), resume="auto", progress=False)
    evals = [(r["step"], bool(r.get("final"))) for r in read_metrics(run) if "eval" in r]
    assert (5, False) in evals and evals[-1] == (10, True) and sum(final for _, final in evals) == 1, evals


def test_a_fresh_start_keeps_the_earlier_runs_config_and_bundle(synth_data, tmp_path, caplog):
    """The warning said the earlier run was kept aside, but its config.yaml was overwritten at once and its
    bundle at the end: only its checkpoints still held its weights."""
    run, quick = tmp_path / "run", ("data.val=null", "data.zeroshot=null")
    first = train(smoke_cfg(synth_data, run, "train.samples=80", *quick), progress=False)
    config = (run / "config.yaml").read_text()
    second = train(smoke_cfg(synth_data, run, "train.samples=32", *quick), progress=False)
    assert (run / "config.1.yaml").read_text() == config and "samples: 80" in config
    assert load_bundle(run / "bundle.1").fingerprint == first["fingerprint"] != second["fingerprint"]
    assert load_bundle(run / "bundle").fingerprint == second["fingerprint"]
    assert "config.1.yaml, bundle.1" in caplog.text


def test_rewind_ends_the_file_with_a_newline(tmp_path):
    """A last record written without its newline (nothing to drop) made the next record join its line."""
    from clipforge.training.records import rewind

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}')
    assert rewind(path, 2) == 0 and path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_lit_style_tuning_from_a_bundle_keeps_the_locked_tower(synth_data, tmp_path):
    first = tmp_path / "first"
    train(smoke_cfg(synth_data, first, "train.samples=32", "data.zeroshot=null", "data.val=null"), progress=False)
    tuned = tmp_path / "tuned"
    train(
        smoke_cfg(
            synth_data,
            tuned,
            "train.samples=64",
            "data.zeroshot=null",
            "data.val=null",
            f"model.init_bundle={first / 'bundle'}",
            "model.lock_image=true",
        ),
        progress=False,
    )
    a = load_bundle(first / "bundle").model.state_dict()
    b = load_bundle(tuned / "bundle").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("visual."))
    assert not torch.equal(a["token_embedding.weight"], b["token_embedding.weight"])


def test_a_bad_resume_file_or_init_bundle_is_a_one_line_error(synth_data, tmp_path):
    (tmp_path / "noise.pt").write_bytes(os.urandom(200))
    (tmp_path / "text.pt").write_text("hello\n")
    torch.save({"not": "a checkpoint"}, tmp_path / "other.pt")
    for name in ("noise.pt", "text.pt", "other.pt"):
        with pytest.raises(ValueError, match="checkpoint") as info:
            train(smoke_cfg(synth_data, tmp_path / "run"), resume=str(tmp_path / name), progress=False)
        assert "\n" not in str(info.value)
    first = tmp_path / "first"
    train(smoke_cfg(synth_data, first, "train.samples=16", "data.zeroshot=null", "data.val=null"), progress=False)
    with pytest.raises(ValueError, match="does not fit model.arch 'cf-tiny-vit'") as info:
        train(
            smoke_cfg(synth_data, tmp_path / "run2", "model.arch=cf-tiny-vit", f"model.init_bundle={first / 'bundle'}"),
            progress=False,
        )
    assert "\n" not in str(info.value)
    (ckpt,) = sorted((first / "checkpoints").glob("*.pt"))[-1:]  # resuming it as another architecture
    with pytest.raises(ValueError, match=r"checkpoint \(a cf-micro-vit run; model.arch is cf-tiny-vit\)") as info:
        train(smoke_cfg(synth_data, tmp_path / "run3", "model.arch=cf-tiny-vit"), resume=str(ckpt), progress=False)
    assert "\n" not in str(info.value) and "missing" in str(info.value)


def test_gradient_checkpointing_and_channels_last_give_the_same_loss(synth_data, tmp_path):
    """Memory/speed options must not change the numbers: the same first-step loss with and without them.

    (Weights are not compared: Adam's first step is ~lr * sign(grad), which turns float-rounding differences
    of near-zero gradients from another convolution algorithm into lr-sized ones. fp32 is pinned: on a CPU with
    fast bf16 `precision: auto` picks bf16 autocast, whose rounding differs between the two layouts by ~1e-3.)"""
    losses = []
    for extra in ((), ("train.grad_checkpointing=true", "train.channels_last=true")):
        run = tmp_path / f"r{len(extra)}"
        train(
            smoke_cfg(
                synth_data,
                run,
                "train.samples=16",
                "model.arch=cf-tiny-rn",
                "data.zeroshot=null",
                "data.val=null",
                "data.sample_shuffle=0",
                "train.log_every=1",
                "train.precision=fp32",
                *extra,
            ),
            progress=False,
        )
        losses.append(read_metrics(run)[0]["loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_rerunning_a_finished_run_redoes_its_final_evaluation_quietly(tmp_path, caplog):
    """`make demo` twice: the second run resumes at the last step and evaluates it again. Its old final record
    is replaced, without the warning meant for work an interrupted run lost."""
    from clipforge.training.records import rewind

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "eval": {}, "final": true}\n')
    assert rewind(path, 2, continuing=False) == 1 and path.read_text() == '{"step": 1, "loss": 1.0}\n'
    assert "dropped" not in caplog.text


def test_too_few_shards_for_the_ranks_is_refused_before_anything_starts(synth_data, tmp_path, monkeypatch):
    """Under torchrun a rank dealt no shard ended its stream at once (a StopIteration traceback on that rank,
    then torchrun killed the others): refused up front, from torchrun's WORLD_SIZE, in one line."""
    from clipforge.training.setup import check_inputs

    one = str(sorted(Path(synth_data["root"]).glob("train/*.tar"))[0])
    cfg = smoke_cfg(synth_data, tmp_path / "run", f"data.train=['{one}']", "data.workers=1")
    check_inputs(cfg, world_size=1)  # one process reads its one shard
    with pytest.raises(ValueError, match=r"1 training shard\(s\) for 2 ranks x 1 data worker\(s\)"):
        check_inputs(cfg, world_size=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="the last ranks would get none"):
        train(cfg, progress=False)  # before any process group, model or file
    assert not (tmp_path / "run").exists()
    resampled = smoke_cfg(synth_data, tmp_path / "run", f"data.train=['{one}']", "data.resampled=true")
    check_inputs(resampled, world_size=2)  # drawing with replacement, every rank has shards
    with pytest.raises(ValueError, match="positive sum"):
        check_inputs(smoke_cfg(synth_data, tmp_path / "run", "data.weights=[0.0]"))


def test_tuning_from_a_bundle_trains_the_bundles_own_activation(tmp_path):
    """A bundle imported with QuickGELU (OpenAI's weights) was fine-tuned as model.arch's GELU model while
    the exported bundle recorded QuickGELU: the model trained must be the one recorded."""
    from open_clip.transformer import QuickGELU

    from clipforge.encoders.model import build_model, resolve_model_config
    from clipforge.training.config import load_config
    from clipforge.training.setup import build_training_model

    arch, model_cfg = resolve_model_config("cf-micro-vit")
    model_cfg = dict(model_cfg, quick_gelu=True)
    save_bundle(build_model(model_cfg), tmp_path / "qg", arch=arch, model_cfg=model_cfg, loss="clip")
    cfg = load_config("smoke", [f"model.init_bundle={tmp_path / 'qg'}", "model.arch=cf-micro-vit"])
    model, _, recorded = build_training_model(cfg)
    assert recorded["quick_gelu"] is True
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(model.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_shards_that_do_not_divide_among_the_readers_warn_of_uneven_sampling(synth_data, tmp_path, caplog):
    """A reader dealt fewer shards cycles them faster, and the loader draws from every reader in turn: the
    imbalance is named before training, with what would even it out."""
    from clipforge.training.setup import check_inputs

    shards = sorted(Path(synth_data["root"]).glob("train/*.tar"))
    assert len(shards) >= 3
    three = "::".join(str(p) for p in shards[:3])
    with caplog.at_level("WARNING", logger="clipforge.training.setup"):
        check_inputs(smoke_cfg(synth_data, tmp_path, f"data.train=['{three}']", "data.workers=2"))
    assert "3 training shards do not divide among 2 readers" in caplog.text
    caplog.clear()
    two = "::".join(str(p) for p in shards[:2])
    with caplog.at_level("WARNING", logger="clipforge.training.setup"):
        check_inputs(smoke_cfg(synth_data, tmp_path, f"data.train=['{two}']", "data.workers=2"))
        check_inputs(
            smoke_cfg(synth_data, tmp_path, f"data.train=['{three}']", "data.workers=2", "data.resampled=true")
        )
    assert "do not divide" not in caplog.text
    five = "::".join(str(p) for p in shards[:5])  # 2 ranks x 4 workers: rank 1 gets one shard for 4 readers' pace
    with caplog.at_level("WARNING", logger="clipforge.training.setup"):
        check_inputs(smoke_cfg(synth_data, tmp_path, f"data.train=['{five}']", "data.workers=4"), world_size=2, rank=1)
        assert "do not divide" not in caplog.text  # rank 1 leaves the saying to rank 0
        check_inputs(smoke_cfg(synth_data, tmp_path, f"data.train=['{five}']", "data.workers=4"), world_size=2)
    assert "5 training shards do not divide among 8 readers" in caplog.text


def test_resuming_from_an_older_checkpoint_sets_the_later_ones_aside(synth_data, tmp_path):
    """`--resume step-5` after a run to step 10 left step-10 in place: pruning to keep_ckpts then removed the
    new branch's checkpoints first, and a later `--resume auto` jumped back to the abandoned step 10."""
    run = tmp_path / "run"
    base = ("data.zeroshot=null", "data.val=null", "train.keep_ckpts=2")
    train(smoke_cfg(synth_data, run, "train.samples=160", *base), progress=False)  # checkpoints 5, 10
    assert [p.name for p in list_checkpoints(run)] == ["step-00000005.pt", "step-00000010.pt"]
    older = run / "checkpoints" / "step-00000005.pt"
    train(smoke_cfg(synth_data, run, "train.samples=128", *base), resume=str(older), progress=False)  # to 8
    assert [p.name for p in list_checkpoints(run)] == ["step-00000005.pt", "step-00000008.pt"]
    aside = run / "checkpoints" / "abandoned-after-00000005"
    assert [p.name for p in aside.iterdir()] == ["step-00000010.pt"]  # kept, out of the way
    path, _ = latest_valid_checkpoint(run)
    assert path.name == "step-00000008.pt"
