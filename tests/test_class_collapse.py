"""The class-collapse defence's losses (dpsnn.defences.class_collapse), against their definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dpsnn.defences import make_defence, parse_defence, validate
from dpsnn.defences.class_collapse import centre_share, smoothing_term, supervised_contrastive
from dpsnn.errors import ConfigError


def test_centre_share_is_zero_on_class_means_one_without_classes_and_blind_to_scale():
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(4, 20, generator=generator)
    y = torch.arange(12) % 4
    assert centre_share(means[y], y).item() == pytest.approx(0.0, abs=1e-6)
    h = torch.randn(12, 20, generator=generator)
    assert centre_share(h, torch.zeros(12, dtype=torch.long)).item() == pytest.approx(1.0, abs=1e-6)
    share = centre_share(h, y).item()
    assert 0 < share < 1
    assert centre_share(1e-3 * h, y).item() == pytest.approx(share, rel=1e-4)  # shrinking h does not lower it


def test_centre_share_equals_a_loop_over_classes():
    generator = torch.Generator().manual_seed(1)
    h, y = torch.randn(30, 5, 2, generator=generator), torch.randint(0, 6, (30,), generator=generator)
    flat = h.flatten(1)
    within = sum(((flat[y == c] - flat[y == c].mean(0)) ** 2).sum() for c in y.unique())
    total = ((flat - flat.mean(0)) ** 2).sum()
    assert centre_share(h, y).item() == pytest.approx((within / total).item(), rel=1e-5)


def reference_supcon(h: torch.Tensor, y: torch.Tensor, temperature: float) -> float:
    """Khosla et al.'s eq. 2, written as a loop over anchors and positives."""
    z = F.normalize(h, dim=1)
    losses = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and y[p] == y[i]]
        if not positives:
            continue
        denominator = sum(math.exp((z[i] @ z[a]).item() / temperature) for a in range(len(z)) if a != i)
        losses.append(
            -sum(math.log(math.exp((z[i] @ z[p]).item() / temperature) / denominator) for p in positives)
            / len(positives)
        )
    return sum(losses) / len(losses)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_supervised_contrastive_equals_the_papers_sum(temperature):
    generator = torch.Generator().manual_seed(2)
    h, y = torch.randn(14, 8, generator=generator), torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4, 4, 5, 6])
    got = supervised_contrastive(h, y, temperature).item()
    assert got == pytest.approx(reference_supcon(h, y, temperature), rel=1e-4)


def test_supervised_contrastive_without_positives_is_zero_and_keeps_the_graph():
    h = torch.randn(5, 3, requires_grad=True)
    loss = supervised_contrastive(h, torch.arange(5), 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert h.grad is not None and torch.count_nonzero(h.grad) == 0


def test_collapsed_classes_give_a_lower_supervised_contrastive_loss():
    generator = torch.Generator().manual_seed(3)
    y = torch.arange(20) % 4
    means = torch.randn(4, 16, generator=generator)
    tight = means[y] + 0.01 * torch.randn(20, 16, generator=generator)
    spread = means[y] + 3.0 * torch.randn(20, 16, generator=generator)
    assert supervised_contrastive(tight, y, 0.1) < supervised_contrastive(spread, y, 0.1)


@pytest.mark.parametrize("smoothing", [0.05, 0.1, 0.3])
def test_smoothing_term_turns_cross_entropy_into_torchs_label_smoothing(smoothing):
    generator = torch.Generator().manual_seed(4)
    logits, y = torch.randn(16, 10, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    smoothed = F.cross_entropy(logits, y) + smoothing_term(logits, y, smoothing)
    expected = F.cross_entropy(logits, y, label_smoothing=smoothing)
    assert smoothed.item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_defence_adds_its_terms_only_when_on():
    x, h, logits, y = torch.rand(8, 1, 28, 28), torch.randn(8, 500), torch.randn(8, 10), torch.arange(8) % 4
    assert make_defence("class-collapse", {"weight": 0.0, "smoothing": 0.1}).loss_terms(x, h, logits, y) == {}
    terms = make_defence("class-collapse", {"weight": 2.0}).loss_terms(x, h, logits, y)
    assert list(terms) == ["class_collapse"] and terms["class_collapse"].item() == pytest.approx(
        2 * centre_share(h, y).item()
    )
    supcon = make_defence("class-collapse", {"weight": 1.0, "loss": "supcon", "smoothing": 0.1})
    assert set(supcon.loss_terms(x, h, logits, y)) == {"class_collapse", "smoothing"}


@pytest.mark.parametrize(
    ("params", "expect"),
    [
        ({"loss": "triplet"}, "loss must be one of centre, supcon"),
        ({"temperature": 0}, "temperature must be positive"),
        ({"smoothing": 1.0}, "smoothing must be in [0, 1)"),
        ({"smoothing": -0.1}, "smoothing must be a non-negative number"),
        ({"weight": -1}, "weight must be a non-negative number"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(params, expect):
    with pytest.raises(ConfigError, match=expect.replace("[", r"\[").replace(")", r"\)")):
        make_defence("class-collapse", params)


def test_keys_and_labels_name_the_loss_and_smoothing():
    assert parse_defence("class-collapse:weight=0.5").key() == "05collapse"
    spec = parse_defence("class-collapse:weight=1,loss=supcon,temperature=0.2,smoothing=0.1")
    assert spec.key() == "1collapse-supcon-t02-ls01"
    assert spec.label() == "class-collapse 1 (supcon, τ 0.2) + smoothing 0.1"


def test_per_sample_dp_refuses_to_train_beside_it():
    problems = validate([parse_defence("class-collapse:weight=1"), parse_defence("dp:epsilon=4")])
    assert problems and "class-collapse" in str(problems[0])
