"""MICO's on-disk format: model folders written and read back, numeric order, refusals, and the submission zip.

The small trees here are written as the official scripts write them (``print(seed, file=f)``,
``csv.writer(f).writerow(...)``), so reading them checks compatibility, not just round trips.
"""

import csv
import zipfile

import numpy as np
import pytest
import torch

from dpsnn.errors import ConfigError, DataError
from dpsnn.mico.challenge import ChallengeSeeds, challenge_split, draw_seeds
from dpsnn.mico.layout import (
    PHASE_MODELS,
    PHASES,
    PREDICTION_FILE,
    SOLUTION_FILE,
    SUBMISSION_PHASES,
    list_model_folders,
    model_folder,
    model_index,
    model_weights_path,
    phase_of,
    read_model_folder,
    read_predictions,
    read_seed,
    read_seeds,
    read_solution,
    write_model_folder,
    write_prediction,
    write_seed,
    write_solution,
    write_submission_zip,
)

SEEDS = ChallengeSeeds(challenge=7590986997487518744, training=12, membership=2**63 - 1)


def official_model_folder(folder, seeds=None, solution=None, prediction=None):
    """A model folder as MICO's training script and starting kit write one."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, seed in (seeds or {}).items():
        with open(folder / name, "w") as handle:
            print(f"{seed}", file=handle)
    for name, row in ((SOLUTION_FILE, solution), (PREDICTION_FILE, prediction)):
        if row is not None:
            with open(folder / name, "w") as handle:
                csv.writer(handle).writerow(row)
    return folder


def halves_but(position, value):
    """200 scores of 0.5, but ``value`` at ``position``."""
    scores = torch.full((200,), 0.5, dtype=torch.float64)
    scores[position] = value
    return scores


def scores(count=200, shift=0.0):
    return torch.linspace(0, 1, count, dtype=torch.float64).roll(int(shift * count))


def test_phases_and_model_ranges_are_mico_s():
    assert PHASES == ("train", "dev", "final") and SUBMISSION_PHASES == ("dev", "final")
    assert [(r.start, r.stop) for r in PHASE_MODELS.values()] == [(0, 100), (100, 150), (150, 200)]
    assert [phase_of(i) for i in (0, 99, 100, 149, 150, 199)] == ["train", "train", "dev", "dev", "final", "final"]
    with pytest.raises(ConfigError, match="numbered 0 to 199, got 200"):
        phase_of(200)


def test_model_folder_paths_and_refusals(tmp_path):
    assert model_folder(tmp_path, "dev", 120) == tmp_path / "dev" / "model_120"
    assert model_weights_path(tmp_path / "train" / "model_3") == tmp_path / "train" / "model_3" / "model.pt"
    with pytest.raises(ConfigError, match="dev models are numbered 100 to 149, got 7"):
        model_folder(tmp_path, "dev", 7)
    with pytest.raises(ConfigError, match="unknown MICO phase 'test'"):
        model_folder(tmp_path, "test", 7)
    assert model_index(tmp_path / "model_42") == 42
    with pytest.raises(DataError, match="not a MICO model folder"):
        model_index(tmp_path / "model_042")


def test_model_folders_are_listed_in_numeric_order(tmp_path):
    for index in (10, 2, 1, 100, 0, 11):
        (tmp_path / "train" / f"model_{index}").mkdir(parents=True)
    (tmp_path / "train" / "model_5").write_text("a file, not a folder")
    (tmp_path / "train" / "notes").mkdir()
    (tmp_path / "train" / "model_x").mkdir()
    assert [folder.name for folder in list_model_folders(tmp_path, "train")] == [
        "model_0",
        "model_1",
        "model_2",
        "model_10",
        "model_11",
        "model_100",
    ]
    with pytest.raises(DataError, match="no such phase folder"):
        list_model_folders(tmp_path, "final")


def test_an_official_train_folder_is_read(tmp_path):
    split = challenge_split(1000, 500, SEEDS, len_challenge=10)
    folder = official_model_folder(
        tmp_path / "train" / "model_3",
        seeds={"seed_challenge": SEEDS.challenge, "seed_training": SEEDS.training, "seed_membership": SEEDS.membership},
        solution=split.solution.tolist(),
    )
    assert (folder / SOLUTION_FILE).read_bytes().endswith(b"\r\n")  # what csv.writer writes
    assert read_seeds(folder) == SEEDS
    assert torch.equal(read_solution(folder), split.solution)
    contents = read_model_folder(folder)
    assert contents.index == 3 and contents.seeds() == SEEDS and torch.equal(contents.solution, split.solution)


def test_an_official_dev_folder_discloses_only_the_challenge_seed(tmp_path):
    folder = official_model_folder(tmp_path / "dev" / "model_100", seeds={"seed_challenge": 5})
    contents = read_model_folder(folder)
    assert (contents.seed_challenge, contents.seed_training, contents.seed_membership) == (5, None, None)
    assert contents.solution is None
    with pytest.raises(DataError, match="model_100: the training and membership seeds are not both disclosed"):
        contents.seeds()
    with pytest.raises(DataError, match="seed_training: missing"):
        read_seeds(folder)


def test_write_model_folder_writes_what_each_phase_discloses(tmp_path):
    split = challenge_split(1000, 500, SEEDS, len_challenge=10)
    train = write_model_folder(tmp_path, "train", 0, SEEDS, split.solution)
    dev = write_model_folder(tmp_path, "dev", 100, SEEDS, split.solution)
    final = write_model_folder(tmp_path, "final", 150, SEEDS, split.solution, disclose_training=True)
    disclosed = ["seed_challenge", "seed_membership", "seed_training", "solution.csv"]
    assert sorted(p.name for p in train.iterdir()) == disclosed
    assert sorted(p.name for p in dev.iterdir()) == ["seed_challenge"]
    assert sorted(p.name for p in final.iterdir()) == ["seed_challenge", "seed_training"]
    assert (train / "seed_challenge").read_text() == f"{SEEDS.challenge}\n"  # as print(seed, file=f)
    assert (train / SOLUTION_FILE).read_bytes() == (",".join(map(str, split.solution.tolist())) + "\r\n").encode()
    assert read_model_folder(train).seeds() == SEEDS and read_model_folder(final).seed_training == SEEDS.training
    with pytest.raises(ConfigError, match="train models are numbered 0 to 99, got 120"):
        write_model_folder(tmp_path, "train", 120, SEEDS, split.solution)
    with pytest.raises(ConfigError, match="model_1: a train model discloses its solution"):
        write_model_folder(tmp_path, "train", 1, SEEDS)
    with pytest.raises(ConfigError, match="a MICO model index is an integer, got 100.0"):
        write_model_folder(tmp_path, "dev", 100.0, SEEDS)


def test_seeds_round_trip_and_bad_seed_files_are_refused(tmp_path):
    write_seed(tmp_path, "membership", 2**64 - 1)
    assert read_seed(tmp_path, "membership") == 2**64 - 1
    with pytest.raises(ConfigError, match="seed_training must be in"):
        write_seed(tmp_path, "training", -1)
    with pytest.raises(ConfigError, match="unknown seed 'model'"):
        write_seed(tmp_path, "model", 1)
    for text, message in [
        ("tensor(5)\n", "'tensor\\(5\\)' is not a seed"),
        ("-5\n", "'-5' is not a seed"),
        (f"{2**64}\n", f"'{2**64}' is not a seed"),
        ("__import__('os')\n", r"\"__import__\('os'\)\" is not a seed"),
        ("5" * 100, "larger than 64 bytes"),
        ("", "'' is not a seed"),
    ]:
        (tmp_path / "seed_challenge").write_text(text)
        with pytest.raises(DataError, match=f"seed_challenge: {message}"):
            read_seed(tmp_path, "challenge")


def test_predictions_round_trip_exactly(tmp_path):
    values = torch.rand(200, dtype=torch.float64)
    values[0], values[1] = 0.0, 1.0
    write_prediction(tmp_path, values)
    text = (tmp_path / PREDICTION_FILE).read_text()
    assert text.count("\n") == 1 and text.count(",") == 199  # one row of 200 values
    assert torch.equal(read_predictions(tmp_path, count=200), values)
    # what the official scorer reads: np.loadtxt(path, delimiter=",")
    assert np.array_equal(np.loadtxt(tmp_path / PREDICTION_FILE, delimiter=","), values.numpy())
    write_prediction(tmp_path, [0.25] * 10, count=10)  # a plain list, another challenge size
    assert read_predictions(tmp_path).tolist() == [0.25] * 10


def test_official_predictions_are_read_in_a_row_or_a_column(tmp_path):
    official_model_folder(tmp_path, prediction=[0.5, 1e-05, 1, 0])
    assert read_predictions(tmp_path).tolist() == [0.5, 1e-05, 1.0, 0.0]
    (tmp_path / PREDICTION_FILE).write_text("0.5\n0.25\n1\n")
    assert read_predictions(tmp_path).tolist() == [0.5, 0.25, 1.0]


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.full((199,), 0.5), "199 scores for 200 challenge points"),
        (halves_but(7, float("nan")), "score 7 is NaN"),
        (halves_but(3, 1.5), r"score 3 is 1.5, outside \[0, 1\]"),
        (halves_but(9, -0.1), r"score 9 is -0.1, outside \[0, 1\]"),
        (halves_but(0, float("inf")), "score 0 is inf"),
        (torch.full((2, 100), 0.5), r"the scores must be one row of values, got shape \(2, 100\)"),
        (["a"] * 200, "the scores must be numbers"),
    ],
)
def test_bad_predictions_are_refused_naming_the_model_folder(tmp_path, bad, message):
    folder = tmp_path / "dev" / "model_101"
    with pytest.raises(ConfigError, match=f"model_101: {message}"):
        write_prediction(folder, bad)
    assert not (folder / PREDICTION_FILE).exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("0.5,0.5\n0.5,0.5\n", "2 rows; expected one row"),
        ("0.5,nan,0.5\n", "value 1 is 'nan', not a number"),
        ("0.5,1_0\n", "value 1 is '1_0', not a number"),
        ("0.5,0.5,\n", "value 2 is '', not a number"),
        ("0.5,__import__('os').system('x')\n", "value 1 is .*, not a number"),
        ("0.5,1.5\n", r"score 1 is 1.5, outside \[0, 1\]"),
        ("0.5,1e999\n", r"score 1 is inf, outside \[0, 1\]"),
        ("0.5,0.5\n", "2 scores for 3 challenge points"),
    ],
)
def test_malformed_prediction_files_are_refused_naming_the_file(tmp_path, text, message):
    (tmp_path / PREDICTION_FILE).write_text(text)
    with pytest.raises(DataError, match=f"prediction.csv: {message}"):
        read_predictions(tmp_path, count=3 if "challenge points" in message else None)


def test_prediction_files_that_are_not_text_or_too_large_are_refused(tmp_path):
    (tmp_path / PREDICTION_FILE).write_bytes("0.5,\u00bd\n".encode())
    with pytest.raises(DataError, match="prediction.csv: not plain ASCII text"):
        read_predictions(tmp_path)
    (tmp_path / PREDICTION_FILE).write_text("0.5," * 300_000)
    with pytest.raises(DataError, match="prediction.csv: larger than 1048576 bytes"):
        read_predictions(tmp_path)
    with pytest.raises(DataError, match="solution.csv: missing"):
        read_solution(tmp_path)


def test_solutions_hold_only_zeros_and_ones(tmp_path):
    write_solution(tmp_path, torch.tensor([0, 1, 1, 0]))
    assert read_solution(tmp_path).tolist() == [0, 1, 1, 0] and read_solution(tmp_path).dtype == torch.long
    assert np.loadtxt(tmp_path / SOLUTION_FILE, delimiter=",").tolist() == [0, 1, 1, 0]
    with pytest.raises(ConfigError, match="only 0 \\(non-member\\) and 1 \\(member\\)"):
        write_solution(tmp_path, [0, 2])
    (tmp_path / SOLUTION_FILE).write_text("0,1,0.5\r\n")
    with pytest.raises(DataError, match="solution.csv: value 2 is 0.5, not 0 or 1"):
        read_solution(tmp_path)


def write_task(root, scenarios=("purchase100_hi", "purchase100_inf"), dev=(100, 101, 110), final=(150, 151)):
    """A task folder whose dev and final models all have predictions (and train models that must be left out)."""
    for scenario in scenarios:
        for phase, indices in (("train", (0, 1)), ("dev", dev), ("final", final)):
            for index in indices:
                seeds = draw_seeds(1, index)
                folder = write_model_folder(root / scenario, phase, index, seeds, torch.tensor([0, 1] * 5))
                write_prediction(folder, scores(10, shift=index / 200), count=10)
    return root


def test_the_submission_zips_only_dev_and_final_predictions(tmp_path):
    task = write_task(tmp_path / "purchase100")
    names = write_submission_zip(task, tmp_path / "submission.zip")
    expected = [
        f"purchase100/{scenario}/{phase}/model_{index}/prediction.csv"
        for scenario in ("purchase100_hi", "purchase100_inf")
        for phase, indices in (("dev", (100, 101, 110)), ("final", (150, 151)))
        for index in indices
    ]
    assert names == expected
    with zipfile.ZipFile(tmp_path / "submission.zip") as archive:
        assert archive.namelist() == expected
        member = "purchase100/purchase100_inf/final/model_151/prediction.csv"
        assert archive.read(member) == (task / member.split("/", 1)[1]).read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial file left


def test_the_submission_zip_is_the_same_for_the_same_predictions(tmp_path):
    task = write_task(tmp_path / "cifar10")
    write_submission_zip(task, tmp_path / "one.zip")
    write_submission_zip(task, tmp_path / "two.zip")
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()


def test_an_incomplete_submission_is_refused_and_nothing_is_written(tmp_path):
    task = write_task(tmp_path / "sst2", scenarios=("sst2_hi", "sst2_inf"))
    (task / "sst2_hi" / "final" / "model_151" / PREDICTION_FILE).unlink()
    with pytest.raises(DataError, match="model_151: no prediction.csv; every dev and final model needs one"):
        write_submission_zip(task, tmp_path / "submission.zip")
    assert not (tmp_path / "submission.zip").exists()

    write_prediction(task / "sst2_hi" / "final" / "model_151", scores(10), count=10)
    (task / "sst2_inf" / "dev" / "model_110" / PREDICTION_FILE).write_text("0.5,2\n")
    with pytest.raises(DataError, match=r"model_110/prediction.csv: score 1 is 2.0, outside \[0, 1\]"):
        write_submission_zip(task, tmp_path / "submission.zip")
    assert not (tmp_path / "submission.zip").exists()


def test_a_submission_needs_dev_and_final_for_every_scenario(tmp_path):
    task = write_task(tmp_path / "cifar10", scenarios=("cifar10_lo",))
    (task / "cifar10_extra" / "dev").mkdir(parents=True)
    with pytest.raises(DataError, match="cifar10_extra/dev: no model folders"):
        write_submission_zip(task, tmp_path / "submission.zip")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty: no scenario folders to submit"):
        write_submission_zip(empty, tmp_path / "submission.zip")
