"""Measure a defended model and an attack on it, on the target's test split.

Every number comes with its standard error: over images for per-image metrics, over
batches of :data:`~dpsnn.metrics.DCOR_BATCH_SIZE` for distance correlation. Example::

    from dpsnn.evaluation import evaluate_attack, evaluate_classifier

    row = evaluate_classifier(target, splits.test)          # accuracy, dcor (+ _se)
    row = evaluate_attack(target, attacker, splits.test, splits.aux, validator=validator)
    row["gap_ssim"], row["gap_ssim_se"]                      # attack minus label-only baseline
"""

from __future__ import annotations

import torch
from torch import Tensor

from dpsnn.attacks.baseline import LabelOnlyBaseline
from dpsnn.attacks.inversion import InversionAttacker, what_server_sees
from dpsnn.data import Split
from dpsnn.metrics import mean_and_se, per_batch_dcor, per_image_correct, reconstruction_metrics, summarise
from dpsnn.models import SplitNN, Validator, predict


def evaluate_classifier(model: SplitNN, test: Split, seed: int = 0) -> dict[str, float]:
    """Test accuracy and dCor(x, what the server sees), each with its standard error."""
    test.require("test")
    torch.manual_seed(seed)  # fixes the wire noise
    seen = what_server_sees(model, test.images)
    correct = (predict(model.server, seen) == test.labels).float()
    row = {"n_test": len(test)}
    row["accuracy"], row["accuracy_se"] = mean_and_se(correct)
    row["dcor"], row["dcor_se"] = mean_and_se(per_batch_dcor(test.images, seen))
    return row


@torch.no_grad()
def decode(attacker: InversionAttacker, seen: Tensor, batch_size: int = 512) -> Tensor:
    """The attacker's reconstructions of the images behind ``seen``, on the CPU."""
    attacker.eval()
    device = next(attacker.parameters()).device
    return torch.cat([attacker(chunk.to(device)).cpu() for chunk in seen.split(batch_size)])


def reconstruct(
    target: SplitNN, attacker: InversionAttacker, images: Tensor, baseline: LabelOnlyBaseline, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Attack reconstructions and label-only guesses of ``images``, from what the server sees."""
    torch.manual_seed(seed)
    seen = what_server_sees(target, images)
    return decode(attacker, seen), baseline(predict(target.server, seen))


def evaluate_attack(
    target: SplitNN,
    attacker: InversionAttacker,
    test: Split,
    aux: Split,
    num_classes: int | None = None,
    validator: Validator | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Reconstruction metrics of the attack and of the label-only baseline, and their gap.

    The attack decodes what the server sees of each test image (noise included). The
    baseline guesses the mean ``aux`` image of the class the server predicts. Keys are
    ``attack_<m>``, ``baseline_<m>`` and ``gap_<m>`` (attack minus baseline, paired per
    image or batch) for m in mse, psnr, ssim, dcor and, with a ``validator``,
    validator_acc; each has a ``_se`` twin.
    """
    test.require("test")
    num_classes = num_classes or int(target.hparams.get("num_classes", 10))
    baseline = LabelOnlyBaseline.fit(aux.images, aux.labels, num_classes)
    reconstructions, guesses = reconstruct(target, attacker, test.images, baseline, seed)
    attack = reconstruction_metrics(reconstructions, test.images, test.labels, validator)
    label_only = reconstruction_metrics(guesses, test.images, test.labels, validator)
    row: dict[str, float] = {"n_test": len(test), "n_aux_baseline": len(aux)}
    row |= summarise("attack_", attack)
    row |= summarise("baseline_", label_only)
    row |= summarise("gap_", {name: attack[name] - label_only[name] for name in attack})
    if validator is not None:
        row["validator_acc_originals"], row["validator_acc_originals_se"] = mean_and_se(
            per_image_correct(validator, test.images, test.labels)
        )
    return row
