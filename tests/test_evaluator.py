"""Toy-world evaluator: loading, accuracy on fresh renders, resizing, save/load, Fréchet distance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dreamdistill.errors import DreamDistillError
from dreamdistill.toyworld import render_dataset
from dreamdistill.toyworld.evaluator import Evaluator, EvaluatorConfig, default_path, frechet_distance


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    if not (default_path() / "model.safetensors").is_file():
        pytest.skip("no shipped evaluator (python -m dreamdistill.toyworld.train_evaluator)")
    return Evaluator.load()


@pytest.fixture(scope="module")
def fresh():
    return render_dataset(200, seed=424242)


def test_shipped_evaluator_accuracy(evaluator: Evaluator, fresh) -> None:
    predicted = evaluator.classify(fresh.images)
    assert set(predicted) >= {"category", "colour", "view", "category_probs", "colour_probs", "view_probs"}
    assert (predicted["category"] == fresh.category).float().mean() >= 0.93
    assert (predicted["colour"] == fresh.colour).float().mean() >= 0.93
    fronted = fresh.fronted
    assert (predicted["view"][fronted] == fresh.view[fronted]).float().mean() >= 0.8
    assert torch.allclose(predicted["view_probs"].sum(dim=-1), torch.ones(len(fresh)), atol=1e-5)


def test_inputs_uint8_float_and_other_resolutions(evaluator: Evaluator, fresh) -> None:
    images = fresh.images[:16]
    as_float = evaluator.embed(images.float() / 255.0)
    assert as_float.shape == (16, evaluator.config.feature_dim)
    assert torch.allclose(evaluator.embed(images), as_float, atol=1e-5)
    big = render_dataset(16, seed=424242 + 1, resolution=64)
    small = render_dataset(16, seed=424242 + 1, resolution=32)
    agree = (evaluator.classify(big.images)["category"] == evaluator.classify(small.images)["category"]).float()
    assert agree.mean() >= 0.8


def test_save_load_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Evaluator(EvaluatorConfig(widths=(8, 8, 8), feature_dim=16)).eval()
    model.save(tmp_path, dtype=torch.float32)
    loaded = Evaluator.load(tmp_path)
    images = torch.rand(4, 3, 32, 32)
    assert loaded.config == model.config
    assert torch.allclose(loaded.embed(images), model.embed(images))
    with pytest.raises(DreamDistillError, match="train_evaluator"):
        Evaluator.load(tmp_path / "missing")


def test_frechet_distance() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 4, generator=generator)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Gaussians N(0, I) and N(m, 4 I): |m|² + d (1 - 2)².
    b = 2.0 * torch.randn(4000, 4, generator=generator) + torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(1.0 + 4.0, rel=0.1)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    assert frechet_distance(a, a + 0.5) > 0.9


def test_kernel_inception_distance_is_unbiased_and_matches_a_direct_sum():
    """KID of two samples of one distribution is centred on 0 (unbiased), of shifted ones clearly positive;
    a block's estimate equals the textbook double sum (two identical blocks: their mean is that sum)."""
    from dreamdistill.toyworld.evaluator import kernel_inception_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 4, generator=g), torch.randn(400, 4, generator=g)
    same, same_se = kernel_inception_distance(a, b)
    assert abs(same) < 3 * same_se + 1e-3
    shifted, shifted_se = kernel_inception_distance(a, b + 1.0)
    assert shifted > same + 4 * shifted_se
    n, x, y = 40, a[:40].double(), (b[:40] + 1.0).double()

    def k(p, q):
        return (p @ q / 4 + 1) ** 3

    direct = (sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
              + sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
              - 2 * sum(k(x[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1)))
    twice, _ = kernel_inception_distance(torch.cat([x, x]), torch.cat([y, y]), blocks=2)
    assert twice == pytest.approx(float(direct), rel=1e-9)


def test_kernel_inception_distance_is_unbiased_for_paired_sets():
    """Samples drawn for the real set's own captions are paired with it (sample i resembles real image i): KID of
    two sets from one distribution stays centred on 0, where a cross term with i = j sits many SEs below."""
    from dreamdistill.toyworld.evaluator import kernel_inception_distance

    g = torch.Generator().manual_seed(1)
    labels = torch.randn(400, 4, generator=g) * 2  # what the captions fix
    real = labels + torch.randn(400, 4, generator=g)
    samples = labels + torch.randn(400, 4, generator=g)  # the same distribution, paired by index with real
    kid, se = kernel_inception_distance(samples, real)
    assert abs(kid) < 3 * se + 1e-3
