import torch

from clipforge.encoders.model import build_model, resolve_model_config
from clipforge.training.distributed import DistInfo
from clipforge.training.loss import ContrastiveLoss
from clipforge.training.state import TrainState
from clipforge.training.step import StepCfg, train_step


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(resolve_model_config("cf-micro-vit")[1])


def make_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(1, 49000, (n, 12), generator=g)


def sgd_step(accum: int, n: int = 16) -> tuple[float, dict[str, torch.Tensor]]:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # updated weights = weights - gradient
    images, texts = make_batch(n)
    state = TrainState(model, model, opt, torch.amp.GradScaler("cpu", enabled=False))
    out = train_step(state, images, texts, step_cfg(DistInfo(), accum))
    return float(out.loss), model.state_dict()


def step_cfg(info: DistInfo, accum: int) -> StepCfg:
    return StepCfg(ContrastiveLoss("clip", info), torch.device("cpu"), "fp32", max_scale=100.0, accum=accum)


def test_accumulation_over_k_micro_batches_equals_one_big_batch():
    loss1, state1 = sgd_step(accum=1)
    loss4, state4 = sgd_step(accum=4)
    assert abs(loss1 - loss4) < 1e-5
    for name, w in state1.items():
        torch.testing.assert_close(state4[name], w, atol=2e-6, rtol=1e-5, msg=name)
    # and the step really moved the weights, including the temperature
    before = make_model().state_dict()
    assert not torch.equal(before["logit_scale"], state1["logit_scale"])


def test_accumulation_when_the_batch_does_not_split_into_accum_pieces():
    """A batch of 6 in 4 micro-batches is 3 pieces of 2 (torch.chunk): the last piece must still carry the
    temperature's gradient (and, under DDP, the synchronised backward), and the step equal one big batch."""
    loss1, state1 = sgd_step(accum=1, n=6)
    loss4, state4 = sgd_step(accum=4, n=6)
    assert abs(loss1 - loss4) < 1e-5
    for name, w in state1.items():
        torch.testing.assert_close(state4[name], w, atol=2e-6, rtol=1e-5, msg=name)
    assert not torch.equal(make_model().state_dict()["logit_scale"], state4["logit_scale"])


def test_optimizer_is_fused_adamw_and_matches_the_foreach_update():
    from clipforge.training.optim import make_optimizer

    def five_steps(fused: bool) -> dict[str, torch.Tensor]:
        model = make_model()
        opt = make_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
        assert opt.defaults["fused"] is True
        if not fused:  # the same groups through the multi-tensor (foreach) kernels
            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
            opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, foreach=True)
            assert not opt.param_groups[0]["fused"]
        g = torch.Generator().manual_seed(2)
        for _ in range(5):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        return model.state_dict()

    fused, foreach = five_steps(True), five_steps(False)
    for name, w in foreach.items():
        torch.testing.assert_close(fused[name], w, atol=1e-6, rtol=1e-5, msg=name)


def test_resuming_a_bf16_or_fp32_checkpoint_under_fp16_starts_a_fresh_grad_scaler():
    """A disabled GradScaler saves {}; loading that into fp16's enabled one raised (e.g. precision auto on an
    older GPU resuming a checkpoint written in bf16)."""
    from clipforge.training.checkpoint import rng_state
    from clipforge.training.config import load_config

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    saved = torch.amp.GradScaler("cpu", enabled=False).state_dict()
    assert saved == {}
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": saved, "rng": rng_state()}
    ckpt |= {"step": 3, "samples_seen": 48, "data": {}}
    state = TrainState(model, model, opt, torch.amp.GradScaler("cpu", enabled=True))
    state.load(ckpt, load_config("smoke"), DistInfo())
    assert state.step == 3 and state.scaler.is_enabled()
