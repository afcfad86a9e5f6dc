"""The attacks suite: every defence against every attack, best-of on its neighbours' decoders, and its tables."""

import math
from dataclasses import dataclass, replace

import pytest
import torch
from torch import nn

from dpsnn.attacks import AttackTraining
from dpsnn.attacks.best_of import DECODER_ATTACKS
from dpsnn.attacks.inversion import DecoderAttack
from dpsnn.attacks.whitebox import WhiteBoxInversion
from dpsnn.defences import DEFENCES, Defence, register_defence
from dpsnn.errors import ConfigError
from dpsnn.experiments.report import attacks_verdict, defence_attack_table, report_blocks, strongest
from dpsnn.experiments.suites import (
    ATTACKED_SETTINGS,
    FULL,
    INVERSION_ATTACKS,
    MEMBERSHIP_ATTACKS,
    SUITES,
    RunConfig,
    attack_column,
    best_of_aux_size,
    suites_of,
    undefended_config,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ATTACKS = SUITES["attacks"]


def test_every_defence_meets_every_attack_on_a_model_another_suite_trains():
    configs = ATTACKS.configs("fashion-mnist", FULL, seed=1)
    assert len(configs) == len(ATTACKED_SETTINGS) * (len(INVERSION_ATTACKS) + len(MEMBERSHIP_ATTACKS))
    families = {d.name for config in configs for d in config.defences}
    assert families == {"laplace", "nopeek", "dp", "suppress", "class-collapse", "adversarial"}
    assert {d.epsilon for c in configs for d in c.defences if d.name == "dp"} == {10.0, 4.0, 1.0}
    assert {d.sparse_end for c in configs for d in c.defences if d.name == "suppress"} == {0.5, 0.8, 0.9, 0.95}
    for config in configs:
        if config.attack.name == "decoder":
            # Its target model is one another suite trains: the decoder run on it is that suite's very run.
            assert set(suites_of(config, FULL)) - {"attacks"}, config.label()
        assert config.seed == 1
        expected_aux = best_of_aux_size(FULL.aux_size, 0.2) if config.attack.name == "best-of" else FULL.aux_size
        assert config.aux_size == expected_aux
    assert best_of_aux_size(5000, 0.2) == 6250 and best_of_aux_size(1000, 0.2) == 1250


def test_short_attack_names_for_the_tables():
    names = [attack_column(RunConfig("fashion-mnist", 0, attack=spec).attack) for spec in MEMBERSHIP_ATTACKS]
    assert names[:4] == ["threshold (loss)", "threshold (confidence)", "threshold (entropy)", "logistic on shadows"]
    assert names[-1] == "LiRA online" and len(set(names)) == len(names)
    assert attack_column(RunConfig("fashion-mnist", 0, attack="decoder-ssim").attack) == "decoder-ssim"


@pytest.fixture
def fast_runner(tmp_path, tiny_runner):
    return tiny_runner(tmp_path, attack_steps=1, aux_size=100, test_size=120)


def test_best_of_chooses_among_the_decoders_the_runs_beside_it_fitted(fast_runner, monkeypatch):
    fits = []
    real = DecoderAttack.fit
    monkeypatch.setattr(DecoderAttack, "fit", lambda self, *a, **k: fits.append(self.name) or real(self, *a, **k))
    plain = undefended_config("fashion-mnist", fast_runner.budget, seed=0)
    decoders = [fast_runner.measure(replace(plain, attack=name)) for name in DECODER_ATTACKS]
    assert fits == list(DECODER_ATTACKS) and all(row["status"] == "ok" for row in decoders)
    best_of = replace(plain, attack="best-of", aux_size=best_of_aux_size(plain.aux_size, 0.2))
    row = fast_runner.measure(best_of)
    assert row["status"] == "ok" and fits == list(DECODER_ATTACKS)  # nothing fitted again
    assert row["n_aux"] == 125 and row["accuracy"] == decoders[0]["accuracy"]
    # The auxiliary split holds what every suite asks for (here data-volume's 1,000), never fewer.
    size = fast_runner.budget.aux_split_size
    assert len(fast_runner.splits("fashion-mnist", 0).aux) == size == 1000
    assert FULL.aux_split_size == best_of_aux_size(FULL.aux_size, 0.2) == 6250  # best-of's, on the full budget
    with pytest.raises(ConfigError, match=f"asks for {size + 1} auxiliary images; the split has {size}"):
        fast_runner.measure(replace(best_of, aux_size=size + 1))
    # Without the runs beside it, best-of fits its decoders once on the same images, and keeps them.
    other = replace(best_of, seed=1)
    fast_runner.measure(other)
    assert fits == list(DECODER_ATTACKS) * 2
    fast_runner.measure(other)
    assert fits == list(DECODER_ATTACKS) * 2
    assert fast_runner.attacker_path(replace(plain, seed=1, attack="decoder-ssim")).is_file()


def test_a_per_image_attack_is_scored_on_its_share_of_the_test_images(fast_runner, monkeypatch):
    monkeypatch.setattr(WhiteBoxInversion, "test_images", 30)
    plain = undefended_config("fashion-mnist", fast_runner.budget, seed=0)
    whitebox = fast_runner.measure(replace(plain, attack="whitebox(steps=2)"))
    decoder = fast_runner.measure(plain)
    assert whitebox["status"] == "ok" and whitebox["n_test"] == 30 and decoder["n_test"] == 120
    assert whitebox["accuracy"] == decoder["accuracy"]  # the model's accuracy is on every test image
    assert math.isfinite(whitebox["attack_ssim"])


def test_shadow_attacks_on_one_target_share_a_scope_and_other_targets_do_not(fast_runner):
    plain = undefended_config("fashion-mnist", fast_runner.budget, seed=0)
    first = fast_runner.shared_with(replace(plain, attack="membership-classifier"))
    first["x"] = 1
    assert fast_runner.shared_with(replace(plain, attack="lira")) is first
    assert fast_runner.shared_with(replace(plain, seed=1, attack="lira")) == {}
    assert fast_runner.shared_with(replace(plain, aux_size=50, attack="lira")) == {}
    assert isinstance(AttackTraining(shared=first).shared, dict)


def _summary_row(setting: str, attack: str, accuracy: float, gaps: tuple[float, float] = (), aucs=()) -> dict:
    suites = "plain noise attacks" if attack == "decoder" else "attacks"  # decoder runs are shared
    row = {"suites": suites, "defence_setting": setting, "attack_name": attack, "accuracy": accuracy}
    row |= {"accuracy_se": 0.001, "n_seeds": 3, "n_diverged": 0}
    if gaps:
        row |= {"gap_ssim": gaps[0], "gap_ssim_se": gaps[1]}
    if aucs:
        row |= {"attack_auc": aucs[0], "attack_auc_se": aucs[1]}
    return row


def test_the_defence_attack_tables_name_each_defences_strongest_attack(monkeypatch):
    rows = [
        _summary_row("none", "decoder", 0.89, gaps=(0.28, 0.01)),
        _summary_row("none", "decoder-large", 0.89, gaps=(0.30, 0.01)),
        _summary_row("noise 3", "decoder", 0.80, gaps=(-0.01, 0.01)),
        _summary_row("noise 3", "best-of", 0.80, gaps=(0.08, 0.01)),
        _summary_row("DP-SGD ε 1", "decoder", 0.77, gaps=(0.30, 0.01)),
        _summary_row("none", "LiRA online", 0.89, aucs=(0.56, 0.005)),
        _summary_row("noise 3", "LiRA online", 0.80, aucs=(0.505, 0.004)),
    ]
    monkeypatch.setattr("dpsnn.experiments.report.suite_table", lambda summary, suite: list(summary))
    inversion = defence_attack_table(rows, "inversion").splitlines()
    assert inversion[2].startswith("| defence | test accuracy | decoder | decoder-large | best-of | strongest")
    assert inversion[4].startswith("| none |") and "**decoder-large** 0.300 ± 0.010" in inversion[4]
    assert inversion[5].startswith("| noise 3 |") and "| – |" in inversion[5]  # noise 3 was not attacked by large
    assert "**best-of** 0.080 ± 0.010" in inversion[5]
    membership = defence_attack_table(rows, "membership")
    assert "**LiRA online** 0.560 ± 0.005" in membership and "decoder" not in membership
    verdict = attacks_verdict(rows)
    assert "Of 3 setting(s)" in verdict and "more than two standard errors on 1: noise 3 (best-of: +0.090)" in verdict
    assert "beats the label-only baseline on every defended setting" in verdict
    assert "above chance (0.5) on 1 of 2 setting(s) (none)." in verdict
    # A defence that no attack beats: said of it, and only of defended settings.
    closed = [r for r in rows if r["defence_setting"] != "noise 3"]
    closed.append(_summary_row("noise 3", "best-of", 0.80, gaps=(0.01, 0.01)))
    closed.append(_summary_row("noise 3", "decoder", 0.80, gaps=(-0.01, 0.01)))
    assert "on noise 3: **there the defence holds against every inversion attack tried.**" in attacks_verdict(closed)
    # The decoder runs it shares with other suites alone do not make the suite measured.
    shared_only = [r for r in rows if r["attack_name"] == "decoder"]
    assert defence_attack_table(shared_only, "inversion").startswith("Not measured yet")


def test_the_attack_tables_say_when_nothing_was_measured(monkeypatch):
    assert defence_attack_table([], "inversion").startswith("Not measured yet")
    assert attacks_verdict([]) == "The attacks suite has not been run yet."
    blocks = report_blocks([])
    assert blocks["attacks"] == defence_attack_table([], "inversion")
    assert blocks["attacks-membership"].startswith("Not measured yet")
    assert blocks["verdict-attacks"] == attacks_verdict([])
    one_seed = [{**_summary_row("none", "decoder-ssim", 0.89, gaps=(0.28, math.nan)), "n_seeds": 1}]
    monkeypatch.setattr("dpsnn.experiments.report.suite_table", lambda summary, suite: list(summary))
    assert "too few seeds" in attacks_verdict(one_seed)


@pytest.fixture
def negating_defence():
    """A test-only defence whose wire sends ``-h``: registered for the test and removed after it."""

    class Negate(nn.Module):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return -h

    @register_defence("toy-negate")
    @dataclass(frozen=True)
    class ToyNegate(Defence):
        on: float = 0.0
        strength = "on"

        def wire(self) -> nn.Module | None:
            return None if self.on == 0 else Negate()

    try:
        yield ToyNegate
    finally:
        DEFENCES.pop("toy-negate", None)


def test_a_defence_that_fools_one_attack_is_scored_by_the_attack_it_does_not_fool(
    tmp_path, tiny_runner, negating_defence, monkeypatch
):
    """The negating wire fools the white-box attack, which inverts the client alone and so matches ``-h`` with
    ``client(x)``; a decoder, fitted on what the server sees, learns the sign. The defence's reported SSIM
    gap must be the decoder's, the strongest attack tried on it."""
    runner = tiny_runner(tmp_path, attack_steps=150, test_size=64)
    toy = negating_defence(on=1.0)
    measured = {}
    for attack in ("decoder", "whitebox(steps=20)"):
        config = replace(undefended_config("fashion-mnist", runner.budget), defences=(toy,), attack=attack)
        row = runner.measure(config)
        assert row["status"] == "ok"
        measured[config.attack.name] = row
    fooled, learned = measured["whitebox"]["gap_ssim"], measured["decoder"]["gap_ssim"]
    assert learned > fooled + 0.05, (learned, fooled)
    rows = [
        _summary_row("toy-negate", name, row["accuracy"], gaps=(row["gap_ssim"], row["gap_ssim_se"]))
        for name, row in measured.items()
    ]
    monkeypatch.setattr("dpsnn.experiments.report.suite_table", lambda summary, suite: list(summary))
    (line,) = [line for line in defence_attack_table(rows, "inversion").splitlines() if line.startswith("| toy")]
    assert f"**decoder** {learned:.3f}" in line
    assert (
        strongest({name: {"gap_ssim": row["gap_ssim"]} for name, row in measured.items()}, "gap_ssim")[0] == "decoder"
    )
