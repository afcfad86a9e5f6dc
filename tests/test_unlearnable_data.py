"""Derived (unlearnable) datasets: made by `scripts/unlearnable.py make`, served by the data registry by name."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_data import FakeSet, fake_mnist, write_mnist

from dpsnn.cli import run
from dpsnn.data import dataset_info, derived_file, derived_metadata, load_images, make_splits, save_derived
from dpsnn.errors import ConfigError, DataError
from dpsnn.results import generated_blocks, read_table
from dpsnn.unlearnable.poisons import make_unlearnable
from dpsnn.unlearnable.report import markdown_table, summarise

REPO = Path(__file__).resolve().parents[1]
TINY_NTGA = {"iterations": 2, "block_size": 60, "target_size": 50, "compile": False}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPSNN_OFFLINE", "1")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def mnist(root: Path) -> FakeSet:
    data = fake_mnist()
    write_mnist(root, data)
    return data


def derived_everywhere(root: Path) -> list[Path]:
    return sorted(path.relative_to(root) for path in (root / "derived").rglob("*") if path.is_file())


@pytest.mark.parametrize(("method", "options"), [("random", {}), ("ntga", TINY_NTGA)])
def test_made_copy_is_served_by_name_within_budget_with_the_source_labels(method, options, mnist, root, tmp_path):
    name = make_unlearnable("mnist", method, 0.3, options=options, root=root, system_dir=tmp_path, progress=False)
    assert name == f"mnist+{method}"
    assert derived_everywhere(root) == [Path(f"derived/{name}/train.safetensors")], "partial state left behind"
    images, labels = load_images(name, True, root, tmp_path)
    clean, clean_labels = load_images("mnist", True, root, tmp_path)
    assert torch.equal(labels, clean_labels)
    change = (images - clean).abs()
    assert change.max() <= 0.3 + 1e-6 and change.max() > 0.2
    test_images, test_labels = load_images(name, False, root, tmp_path)
    assert torch.equal(test_images, load_images("mnist", False, root, tmp_path)[0])
    metadata = derived_metadata(name, root)
    assert metadata["source"] == "mnist" and metadata["method"] == method and float(metadata["epsilon"]) == 0.3
    assert float(metadata["largest_change"]) == pytest.approx(change.max().item(), abs=1e-6)
    splits = make_splits(name, seed=3, val_size=50, aux_size=50, root=root, system_dir=tmp_path)
    clean_splits = make_splits("mnist", seed=3, val_size=50, aux_size=50, root=root, system_dir=tmp_path)
    assert torch.equal(splits.val.labels, clean_splits.val.labels)  # the same images, in the same splits
    assert (splits.val.images - clean_splits.val.images).abs().max() > 0.2  # ... poisoned, val included


def test_derived_names_are_checked():
    assert dataset_info("fashion-mnist+ntga-eps0.1").derived_from == "fashion-mnist"
    assert dataset_info("cifar10+error-min").image_shape == (3, 32, 32)
    for bad in ("fashion-mnist+", "fashion-mnist+NTGA", "fashion-mnist+a/b"):
        with pytest.raises(DataError, match="not a derived dataset name"):
            dataset_info(bad)
    with pytest.raises(DataError, match="unknown dataset 'nope\\+ntga'"):
        dataset_info("nope+ntga")


def test_a_missing_copy_says_how_to_make_it(mnist, root, tmp_path):
    with pytest.raises(DataError, match="scripts/unlearnable.py make --dataset mnist --method ntga"):
        make_splits("mnist+ntga", val_size=50, aux_size=50, root=root, system_dir=tmp_path)


def plant(root: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    path = derived_file(name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def test_copies_that_do_not_match_their_source_are_refused(mnist, root, tmp_path):
    images, labels = mnist.train_pixels.unsqueeze(1), mnist.train_labels
    cases = {
        "mnist+labels": {"images": images, "labels": (labels + 1) % 10},
        "mnist+short": {"images": images[:-1], "labels": labels[:-1]},
        "mnist+floats": {"images": images.float() / 255, "labels": labels},
        "mnist+nolabels": {"images": images},
    }
    for name, tensors in cases.items():
        plant(root, name, tensors)
        with pytest.raises(DataError, match="does not match its source 'mnist'"):
            load_images(name, True, root, tmp_path)
    path = plant(root, "mnist+cut", {"images": images, "labels": labels})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="cannot be read"):
        load_images("mnist+cut", True, root, tmp_path)


def test_only_whole_byte_copies_of_the_source_are_saved(mnist, root, tmp_path):
    with pytest.raises(DataError, match="uint8"):
        save_derived("mnist+x", mnist.train_pixels.unsqueeze(1).float(), {}, root, system_dir=tmp_path)
    with pytest.raises(DataError, match="registered dataset, not a derived one"):
        save_derived("mnist", mnist.train_pixels.unsqueeze(1), {}, root, system_dir=tmp_path)
    assert not (root / "derived").exists()


def test_an_interrupted_make_leaves_no_dataset_and_resumes(mnist, root, tmp_path, monkeypatch):
    import dpsnn.unlearnable.poisons as poisons

    real, calls = poisons.attack_block, {"count": 0}

    def interrupted(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(poisons, "attack_block", interrupted)
    arguments = {"options": TINY_NTGA, "root": root, "system_dir": tmp_path, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        make_unlearnable("mnist", "ntga", 0.3, **arguments)
    assert not derived_file("mnist+ntga", root).exists()
    assert len(list((root / "derived" / "mnist+ntga" / "partial").glob("block-*"))) == 2
    monkeypatch.setattr(poisons, "attack_block", real)
    resumed = make_unlearnable("mnist", "ntga", 0.3, **arguments)
    resumed_images = load_images(resumed, True, root, tmp_path)[0]
    again = make_unlearnable("mnist", "ntga", 0.3, tag="again", **arguments)
    torch.testing.assert_close(load_images(again, True, root, tmp_path)[0], resumed_images, rtol=0, atol=0)


def run_script(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    main = runpy.run_path(str(REPO / "scripts" / "unlearnable.py"))["main"]
    monkeypatch.setattr(sys, "argv", ["unlearnable.py"])
    with pytest.raises(SystemExit) as exited:
        run(main, args)
    return exited.value.code


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["make", "--epsilon", "0"], "epsilon must be in (0, 1]"),
        (["make", "--epsilon", "1.5"], "epsilon must be in (0, 1]"),
        (["make", "--time", "0"], "training time t must be positive"),
        (["make", "--block-size", "301"], "block size 301 is larger than the training set (300 images)"),
        (["make", "--method", "random", "--iterations", "2"], "--iterations: not a setting of --method random"),
        (["make", "--method", "ntga", "--surrogate", "mlp:64"], "--surrogate: not a setting of --method ntga"),
        (["make", "--dataset", "mnist+ntga"], "itself a derived dataset"),
        (["train", "--dataset", "mnist+ntga"], "make it with"),
        (["train", "--dataset", "mnist+labels"], "does not match its source"),
    ],
)
def test_bad_input_gives_one_line_and_writes_nothing(args, expect, mnist, root, tmp_path, capsys, monkeypatch):
    images, labels = mnist.train_pixels.unsqueeze(1), mnist.train_labels
    plant(root, "mnist+labels", {"images": images, "labels": (labels + 1) % 10})
    before = sorted(path for path in tmp_path.rglob("*"))
    folders = ["--data-dir", str(root), "--results-dir", str(tmp_path / "results"), "--no-progress"]
    if "--dataset" not in args:
        folders += ["--dataset", "mnist"]
    code = run_script([*args, *folders], monkeypatch)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("unlearnable.py: error: ") and expect in lines[0], lines[0]
    assert sorted(path for path in tmp_path.rglob("*")) == before


def test_unknown_recipe_is_a_usage_error(capsys, monkeypatch):
    assert run_script(["train", "--recipe", "sharpen"], monkeypatch) == 2
    assert "unknown recipe 'sharpen'" in capsys.readouterr().err


def test_make_then_train_writes_rows_with_standard_errors(mnist, root, tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    folders = ["--data-dir", str(root), "--results-dir", str(results), "--no-progress"]
    assert run_script(["make", "--dataset", "mnist", "--method", "random", *folders], monkeypatch) == 0
    train = ["train", "--dataset", "mnist+random", "--recipe", "plain", "--recipe", "last-layer:clean_size=20"]
    small = ["--epochs", "1", "--train-size", "100", "--val-size", "50", "--aux-split-size", "50", "--seeds", "2"]
    code = run_script([*train, *small, *folders], monkeypatch)
    assert code == 0
    _, made = read_table(results / "make.csv")
    assert [row["dataset"] for row in made] == ["mnist+random"] and float(made[0]["largest_change"]) <= 0.3
    _, rows = read_table(results / "train.csv")
    assert len(rows) == 4
    for row in rows:
        assert 0 <= float(row["test_acc"]) <= 1 and float(row["test_acc_se"]) > 0
        assert row["obeys_rules"] == ("True" if row["recipe"] == "plain" else "False")
    assert run_script([*train, *small, *folders], monkeypatch) == 0  # a second run skips what is there
    assert len(read_table(results / "train.csv")[1]) == 4
    assert "already in" in capsys.readouterr().out
    assert run_script(["summary", "--results-dir", str(results)], monkeypatch) == 0
    _, summary = read_table(results / "summary.csv")
    assert [row["recipe"] for row in summary] == [rows[0]["recipe"], rows[1]["recipe"]]
    for row in summary:
        accuracies = [float(r["test_acc"]) for r in rows if r["recipe"] == row["recipe"]]
        assert row["seeds"] == "2"
        assert float(row["test_acc"]) == pytest.approx(sum(accuracies) / 2, abs=1e-6)
        assert float(row["test_acc_se"]) == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2, abs=1e-6)
    assert "| mnist+random (ε = 0.3) | reference |" in capsys.readouterr().out


def test_summary_without_results_is_one_line(tmp_path, capsys, monkeypatch):
    assert run_script(["summary", "--results-dir", str(tmp_path)], monkeypatch) == 1
    assert "run `scripts/unlearnable.py train` first" in capsys.readouterr().err


def test_options_of_a_method_are_checked(mnist, root, tmp_path):
    with pytest.raises(ConfigError, match="ntga has no setting pgd_steps"):
        make_unlearnable("mnist", "ntga", 0.3, options={"pgd_steps": 3}, root=root, system_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown poison method 'blur'"):
        make_unlearnable("mnist", "blur", 0.3, root=root, system_dir=tmp_path)
    assert not (root / "derived").exists()


def test_error_min_surrogate_flag_chooses_the_architecture(mnist, root, tmp_path, monkeypatch):
    results = tmp_path / "results"
    folders = ["--data-dir", str(root), "--results-dir", str(results), "--no-progress", "--dataset", "mnist"]
    tiny = ["--pgd-steps", "1", "--train-steps", "1", "--max-rounds", "1", "--surrogate", "mlp:64"]
    assert run_script(["make", "--method", "error-min", *tiny, *folders], monkeypatch) == 0
    _, made = read_table(results / "make.csv")
    assert [row["dataset"] for row in made] == ["mnist+error-min"]
    assert json.loads(made[0]["options"])["architecture"] == "mlp:64"


def test_summary_refreshes_the_readme_block_it_is_given(mnist, root, tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n<!-- generated:unlearnable -->\nold\n<!-- end:unlearnable -->\n\nprose\n")
    folders = ["--data-dir", str(root), "--results-dir", str(results), "--no-progress"]
    assert run_script(["make", "--dataset", "mnist", "--method", "random", *folders], monkeypatch) == 0
    small = ["--epochs", "1", "--train-size", "60", "--val-size", "30", "--aux-split-size", "30"]
    assert run_script(["train", "--dataset", "mnist+random", *small, *folders], monkeypatch) == 0
    assert run_script(["summary", "--results-dir", str(results), "--readme", str(readme)], monkeypatch) == 0
    _, rows = read_table(results / "train.csv")
    text = readme.read_text()
    assert generated_blocks(readme) == {"unlearnable": markdown_table(summarise(rows))}
    assert text.startswith("# Title\n") and text.endswith("\nprose\n") and "old" not in text
    assert "refreshed the 'unlearnable' table" in capsys.readouterr().out


def test_committed_readme_table_agrees_with_the_committed_results():
    _, rows = read_table(REPO / "results" / "unlearnable" / "train.csv")
    assert generated_blocks(REPO / "README.md")["unlearnable"] == markdown_table(summarise(rows))


def test_summary_orders_clean_then_controls_then_ntga_with_plain_first():
    def row(method, recipe, rules="True", seed="0", accuracy="0.5"):
        dataset = "fashion-mnist" if method == "clean" else f"fashion-mnist+{method}"
        return {
            "dataset": dataset, "method": method, "epsilon": "0.3", "architecture": "reference", "recipe": recipe,
            "epochs": "10", "train_size": "100", "obeys_rules": rules, "seed": seed, "test_acc": accuracy,
            "test_acc_se": "0.01",
        }  # fmt: skip

    rows = [
        row("ntga", "last-layer", rules="False"),
        row("ntga", "jpeg(quality=10)"),
        row("ntga", "plain"),
        row("random", "plain"),
        row("clean", "plain", accuracy="0.9"),
        row("clean", "plain", seed="1", accuracy="0.8"),
        row("ntga", "binarise(threshold=0.5)"),
    ]
    summary = summarise(rows)
    assert [(r["method"], r["recipe"]) for r in summary] == [
        ("clean", "plain"),
        ("random", "plain"),
        ("ntga", "plain"),
        ("ntga", "jpeg(quality=10)"),
        ("ntga", "binarise(threshold=0.5)"),
        ("ntga", "last-layer"),
    ]
    assert summary[0]["seeds"] == 2 and summary[0]["test_acc"] == pytest.approx(0.85)
