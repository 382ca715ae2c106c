import json

import pytest

from clipforge.training.loop import train
from clipforge.training.report import write_report
from tests.training.test_train import read_metrics, smoke_cfg


@pytest.fixture(scope="module")
def short_run(synth_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    train(smoke_cfg(synth_data, run, "train.samples=192", "eval.every=4", "train.log_every=2"), progress=False)
    return run


def test_report_has_every_curve_with_the_runs_numbers(short_run):
    path = write_report(short_run)
    page = path.read_text()
    records = read_metrics(short_run)
    assert f"{sum('eval' in r for r in records)} evaluations" in page
    assert "data:image/png;base64," in page
    for needed in ("loss", "logit scale", "zero-shot accuracy", "InfoNCE bound", "modality gap", "canonical"):
        assert needed in page, needed


def test_report_renders_in_chromium_without_console_errors(short_run, chromium):
    path = write_report(short_run)
    records = read_metrics(short_run)
    page = chromium.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    assert errors == []
    imgs = page.locator("figure img")
    assert imgs.count() >= 8
    for i in range(imgs.count()):  # every plot actually decoded and laid out
        assert page.evaluate("(img) => img.complete && img.naturalWidth > 100", imgs.nth(i).element_handle())
    # the loss plot draws exactly the logged losses
    loss = json.loads(page.locator("img[data-title='loss']").get_attribute("data-series"))["loss"]
    logged = [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert list(zip(loss["step"], loss["value"], strict=True)) == logged
    # the zero-shot curve and the final table match the evaluations
    evals = [r for r in records if "eval" in r]
    zs = json.loads(page.locator("img[data-title='zero-shot accuracy']").get_attribute("data-series"))
    assert zs["zeroshot_top1"]["value"] == [e["eval"]["zeroshot_top1"] for e in evals]
    shown = float(page.locator("td[data-key='diag_mi_lower_bound']").inner_text())
    assert shown == pytest.approx(evals[-1]["eval"]["diag_mi_lower_bound"], abs=1e-4)
    assert page.locator("table.examples img").count() == 16
    page.close()


def test_non_finite_values_are_null_in_the_data_series_and_gaps_in_the_plot(tmp_path):
    """A diverged run logs NaN: json.dumps wrote it as NaN, which is not JSON (the page's data-series broke)."""
    import html
    import re

    (tmp_path / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "loss": v}) + "\n"
            for s, v in [(1, 2.0), (2, float("nan")), (3, float("inf")), (4, 1.5)]
        )
    )
    page = write_report(tmp_path, examples=False).read_text()
    series = [json.loads(html.unescape(m)) for m in re.findall(r"data-series='([^']*)'", page)]
    assert {"loss": {"step": [1, 2, 3, 4], "value": [2.0, None, None, 1.5]}} in series
