"""Zero-shot prompts: one default list, checked templates, one class-embedding ensemble for eval and service."""

import numpy as np
import pytest
from PIL import Image

from clipforge.cli import main
from clipforge.encoders.bundle import load_bundle
from clipforge.encoders.prompts import DEFAULT_TEMPLATES, check_templates, class_embeddings, ensemble, fill
from clipforge.training.config import EvalCfg
from clipforge.training.evaluate import zeroshot_eval


def test_one_default_list_for_training_eval_and_the_service():
    from clipforge.service.settings import Settings

    assert EvalCfg().templates == DEFAULT_TEMPLATES
    assert tuple(Settings().templates) == DEFAULT_TEMPLATES


def test_class_embedding_is_the_renormalised_mean_of_its_prompts(micro_bundle):
    b = load_bundle(micro_bundle, device="cpu", backend="torch")
    templates = ("a photo of a {}.", "{} {{not a field}}")
    assert fill(templates, ["cat", "dog"]) == [
        "a photo of a cat.",
        "cat {{not a field}}",
        "a photo of a dog.",
        "dog {{not a field}}",
    ]
    got = class_embeddings(b, ["cat", "dog"], templates)  # [2, D]
    per_prompt = b.encode_texts(["a photo of a dog.", "dog {{not a field}}"]).numpy()
    want = per_prompt.mean(0) / np.linalg.norm(per_prompt.mean(0))
    np.testing.assert_allclose(got[1], want, atol=1e-6)
    np.testing.assert_allclose(ensemble(np.ones((6, 4), np.float32), 3), np.full((3, 4), 0.5), atol=1e-7)


@pytest.mark.parametrize("bad", [["a photo"], ["{0} {1}"], [], ["ok {}", "{x}"]])
def test_a_template_without_a_slot_is_refused(bad):
    with pytest.raises(ValueError, match="template"):
        check_templates(bad)


def test_zeroshot_refuses_a_slotless_template_and_a_set_of_only_undecodable_images(micro_bundle, tmp_path):
    b = load_bundle(micro_bundle, device="cpu", backend="torch")
    for cls in ("red", "blue"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "0.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="none of its 2 images could be decoded"):
        zeroshot_eval(b, b.preprocess, tmp_path)
    Image.new("RGB", (40, 40), (255, 0, 0)).save(tmp_path / "red" / "0.jpg")
    assert zeroshot_eval(b, b.preprocess, tmp_path)["zeroshot_bad_images"] == 1
    with pytest.raises(ValueError, match="has no '{}'"):
        zeroshot_eval(b, b.preprocess, tmp_path, ("a photo",))


def test_eval_with_a_positional_template_is_one_line(micro_bundle, tmp_path, capsys):
    for cls in ("red", "blue"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (40, 40), (255, 0, 0)).save(tmp_path / cls / "0.jpg")
    rc = main(["eval", str(micro_bundle), "--zeroshot", str(tmp_path), "--template", "{0} {1}"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "'{0} {1}' has no '{}'" in err, err
