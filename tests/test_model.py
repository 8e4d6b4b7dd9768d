"""The networks, checkpoint files and the inference API, on real CK+ faces and a real colour photo."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from exaug.errors import ExaugError
from exaug.expressions import EXPRESSIONS
from exaug.io.images import load_image
from exaug.model import (Discriminator, ExpressionClassifier, ExpressionGenerator, Generator, ModelConfig,
                         load_generator, load_state, save_generator, save_state)
from exaug.model.checkpoint import generator_metadata
from exaug.model.networks import IMAGE_SIZES

SIZE = 64


def _model(channels: int = 3, attention: bool = True, seed: int = 0) -> ExpressionGenerator:
    """A small untrained model: the checks here are about plumbing, not about learned expressions."""
    torch.manual_seed(seed)
    config = ModelConfig(image_size=SIZE, channels=channels, conv_dim=8, repeat_num=1, attention=attention)
    meta = generator_metadata(config, expressions=EXPRESSIONS, template="exaug", data={"source": "test"}, steps=0)
    return ExpressionGenerator(Generator(config).eval(), ExpressionClassifier(config).eval(), meta)


def _square(image: np.ndarray) -> torch.Tensor:
    side = min(image.shape[:2])
    crop = torch.from_numpy(image[:side, :side].copy()).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(crop, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def ck_faces(ckplus_dir: Path) -> torch.Tensor:
    """Four real grey CK+ faces (R = G = B) as uint8 RGB at the test size."""
    paths = [sorted((ckplus_dir / name).glob("*.png"))[0] for name in ("neutral", "happy", "surprise", "anger")]
    return torch.cat([_square(load_image(path)) for path in paths])


@pytest.fixture(scope="module")
def colour_faces(people_dir: Path) -> torch.Tensor:
    return torch.cat([_square(load_image(path)) for path in sorted(people_dir.glob("*/*.jpg"))[:2]])


def _cbcr(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.double().unbind(1)
    return torch.stack([-0.168736 * r - 0.331264 * g + 0.5 * b, 0.5 * r - 0.418688 * g - 0.081312 * b], 1)


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_network_shapes_follow_the_config(size):
    config = ModelConfig(image_size=size, channels=1, conv_dim=4, repeat_num=1)
    x = torch.rand(2, 1, size, size) * 2 - 1
    out, mask = Generator(config)(x, torch.eye(8)[:2])
    assert out.shape == x.shape and mask.shape == (2, 1, size, size)
    assert out.abs().max() <= 1 and 0 <= mask.min() and mask.max() <= 1
    src, cls = Discriminator(config)(x)
    patches = max(2, size // 64)  # D stops at 2x2 patches, or after StarGAN's six halvings
    assert src.shape == (2, 1, patches, patches) and cls.shape == (2, 8)
    assert Generator(ModelConfig(image_size=size, attention=False, conv_dim=4))(
        torch.zeros(1, 3, size, size), torch.eye(8)[:1])[1] is None


def test_default_model_sizes_fit_shipping():
    config = ModelConfig()
    generator = sum(p.numel() for p in Generator(config).parameters())
    estimator = sum(p.numel() for p in ExpressionClassifier(config).parameters())
    assert (generator + estimator) * 2 < 25e6  # an fp16 default model fits the package budget
    assert estimator < 1e6


def test_generate_shape_dtype_device_and_errors(ck_faces):
    model = _model()
    out = model.generate(ck_faces, "happy")
    assert out.shape == ck_faces.shape and out.dtype == torch.uint8 and out.device == ck_faces.device
    per_face = model.generate(ck_faces, ["happy", "sad", "Angry", "contempt"])
    by_index = model.generate(ck_faces, torch.tensor([1, 2, 6, 7]))
    assert torch.equal(per_face, by_index)
    with pytest.raises(ValueError, match="64x64"):
        model.generate(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "happy")
    with pytest.raises(ValueError, match="uint8"):
        model.generate(ck_faces.float(), "happy")
    with pytest.raises(ValueError, match="unknown expression"):
        model.generate(ck_faces, "bored")
    with pytest.raises(ValueError, match="2 expressions given for 4 faces"):
        model.generate(ck_faces, ["happy", "sad"])


def test_an_empty_batch_is_an_empty_answer(ck_faces):
    """A video chunk with no face to render calls generate() with no faces: every form must work."""
    model = _model()
    empty = ck_faces[:0]
    for out in (model.generate(empty, "happy"), model.generate(empty, []), model.generate(empty, torch.zeros(0)),
                model.generate(empty, "happy", intensity=0.5),
                model.generate(empty, "happy", intensity=torch.zeros(0)),
                model.generate(empty, "sad", intensity=0.3, source_expressions="happy")):
        assert out.shape == (0, 3, SIZE, SIZE) and out.dtype == torch.uint8
    assert model.generate_all(empty, ["happy", "sad"]).shape == (0, 2, 3, SIZE, SIZE)
    assert model.estimate_expressions(empty).shape == (0, 8)


def test_generate_all_matches_one_expression_at_a_time(ck_faces):
    model = _model()
    model.max_batch = 5  # chunks that cut across faces and expressions
    everything = model.generate_all(ck_faces, list(EXPRESSIONS))
    assert everything.shape == (4, 8, 3, SIZE, SIZE) and everything.dtype == torch.uint8
    for index, name in enumerate(EXPRESSIONS):
        single = model.generate(ck_faces, name)
        assert (everything[:, index].int() - single.int()).abs().max() <= 1


def test_intensity_blends_from_the_source_label(ck_faces):
    model = _model()
    sad = model.generate(ck_faces, "sad")
    assert torch.equal(model.generate(ck_faces, "happy", intensity=0.0, source_expressions="sad"), sad)
    assert torch.equal(model.generate(ck_faces, "sad", intensity=1.0, source_expressions="happy"), sad)
    halfway = model.generate(ck_faces, "happy", intensity=0.5)  # source from the estimator
    assert halfway.shape == ck_faces.shape and not torch.equal(halfway, model.generate(ck_faces, "happy"))
    probs = model.estimate_expressions(ck_faces)
    assert probs.shape == (4, 8) and torch.allclose(probs.sum(1), torch.ones(4))
    with pytest.raises(ValueError, match="intensity"):
        model.generate(ck_faces, "happy", intensity=1.5)


def test_luma_model_keeps_colour_chroma_and_grey_stays_grey(colour_faces, ck_faces):
    model = _model(channels=1)
    out = model.generate(colour_faces, "surprise")
    assert not torch.equal(out, colour_faces)
    unclipped = ((out > 0) & (out < 255)).all(dim=1, keepdim=True).expand(-1, 2, -1, -1)
    assert unclipped.float().mean() > 0.9
    drift = (_cbcr(out) - _cbcr(colour_faces)).abs()[unclipped]
    assert drift.max() <= 0.51  # output rounding only
    grey = model.generate(ck_faces, "happy")
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, ck_faces):
    model = _model(seed=3)
    path = save_generator(tmp_path / "g.pt", model._generator, model._source_estimator, model.meta)
    loaded = ExpressionGenerator.load(path, "cpu")
    assert loaded.meta["steps"] == 0 and loaded.expressions == EXPRESSIONS and loaded.template == "exaug"
    assert loaded.image_size == SIZE and loaded.channels == 3 and loaded.meta["mode"] == "rgb"
    names = list(EXPRESSIONS)
    assert torch.equal(loaded.generate_all(ck_faces, names), model.generate_all(ck_faces, names))
    assert torch.equal(loaded.estimate_expressions(ck_faces), model.estimate_expressions(ck_faces))
    assert torch.load(path, weights_only=True)["format"] == "exaug.generator"


def test_fp16_inference_file_is_half_the_size_and_close(tmp_path, ck_faces):
    model = _model(seed=4)
    full = save_generator(tmp_path / "full.pt", model._generator, model._source_estimator, model.meta)
    half = save_generator(tmp_path / "half.pt", model._generator, model._source_estimator, model.meta, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = ExpressionGenerator.load(half, "cpu")
    assert loaded.meta["dtype"] == "float16"
    names = list(EXPRESSIONS)
    diff = (loaded.generate_all(ck_faces, names).int() - model.generate_all(ck_faces, names).int()).abs()
    assert diff.float().mean() < 0.5 and diff.max() <= 4


class _Payload:
    """Not a tensor: weights_only loading must refuse it."""


def test_wrong_or_corrupt_files_are_clear_errors(tmp_path):
    model = _model()
    good = save_generator(tmp_path / "good.pt", model._generator, model._source_estimator, model.meta)
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"format": "exaug.generator"}))
    torch.save({"format": "exaug.generator", "model": _Payload()}, tmp_path / "object.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    state = save_state(tmp_path / "state.pt", {"step": 1})
    cases = {
        "truncated.pt": "corrupt or truncated", "noise.pt": "not a readable checkpoint",
        "pickle.pt": "not a readable checkpoint", "object.pt": "Python objects",
        "foreign.pt": "not an exaug checkpoint", "state.pt": "inference",
        "missing.pt": "no such checkpoint",
    }
    for name, reason in cases.items():
        with pytest.raises(ExaugError, match=reason) as raised:
            load_generator(tmp_path / name)
        assert str(raised.value).startswith(str(tmp_path / name))
    with pytest.raises(ExaugError, match="training state"):
        load_state(good)
    assert load_state(state)["step"] == 1
    with pytest.raises(ExaugError, match="neither a StarGAN run's 'latest' checkpoint pointer nor a guided run's "
                                         "guided.generator.pt"):
        ExpressionGenerator.load(tmp_path)  # a directory that is not a run
