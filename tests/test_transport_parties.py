"""Two-party training (dpsnn.transport.parties, scripts/split.py): a real server and a real client on loopback.

Each run starts two interpreters (a few seconds each) and trains the reference network on a
few hundred Fashion-MNIST images; every wait is bounded by the parties' own timeouts and by
the test's.
"""

from __future__ import annotations

import csv
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dpsnn.attacks import AttackTraining, make_attack
from dpsnn.data import make_splits
from dpsnn.errors import CheckpointError, ConfigError, DataError, TransportError
from dpsnn.evaluation import evaluate_attack, evaluate_classifier
from dpsnn.training import train_classifier
from dpsnn.transport import Link
from dpsnn.transport.parties import (
    ClientParty,
    PartyConfig,
    config_differences,
    join_parties,
    two_party_defences,
)
from dpsnn.transport.recording import Recording, RecordingWriter

REPO = Path(__file__).resolve().parents[1]
SPLIT = REPO / "scripts" / "split.py"
SMALL = ("--train-size", "384", "--val-size", "256", "--batch-size", "64", "--max-epochs", "1")
WAIT = 240  # seconds a whole two-party run may take in a test
NOISE = 0.5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Party:
    """``split.py ROLE`` in a child process, its output in files under ``folder``."""

    def __init__(self, role: str, port: int, folder: Path, data_root: Path, *flags: str, name: str = "") -> None:
        self.role = name or role
        self.out = (folder / f"{self.role}.out").open("w")
        self.err = (folder / f"{self.role}.err").open("w")
        self.folder = folder
        command = [sys.executable, str(SPLIT), role, "--address", f"127.0.0.1:{port}", "--data-dir", str(data_root)]
        command += ["--no-progress", "--timeout", "20", "--connect-timeout", "90", *flags]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(command, cwd=folder, stdout=self.out, stderr=self.err, env=env)

    def wait(self, timeout: float = WAIT) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self.out.close()
            self.err.close()

    def stdout(self) -> str:
        return (self.folder / f"{self.role}.out").read_text()

    def stderr(self) -> str:
        return (self.folder / f"{self.role}.err").read_text()

    def wait_for(self, text: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stdout():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the {self.role} never printed {text!r}: {self.stdout()} {self.stderr()}")
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.wait()


def two_parties(folder: Path, data_root: Path, server: tuple[str, ...], client: tuple[str, ...]) -> tuple[Party, Party]:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return Party("server", port, folder, data_root, *server), Party("client", port, folder, data_root, *client)


def finish(*parties: Party) -> None:
    for party in parties:
        code = party.wait()
        assert code == 0, f"the {party.role} exited with {code}: {party.stderr()[-2000:]}"


def one_line_error(party: Party) -> str:
    lines = [line for line in party.stderr().splitlines() if line.strip() and "Warning" not in line]
    assert party.process.returncode not in (0, None)
    assert lines and "Traceback" not in party.stderr(), party.stderr()
    assert lines[-1].startswith("split.py: error: "), lines
    return lines[-1]


@pytest.fixture(scope="module")
def splits(data_root):
    """The splits both parties draw (unpacking the dataset here, before two processes would race to)."""
    return make_splits("fashion-mnist", seed=0, train_size=384, val_size=256, root=data_root)


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory, data_root, splits):
    """Noise 0.5 on the wire, one epoch; the server queries 600 auxiliary images, the client infers 300 test images."""
    folder = tmp_path_factory.mktemp("noisy")
    flags = (*SMALL, "--noise-scale", str(NOISE))
    server, client = two_parties(folder, data_root, (*flags, "--queries", "600"), (*flags, "--infer", "300"))
    finish(server, client)
    return folder, server, client


def test_the_server_receives_what_crossed_the_wire_and_nothing_else(noisy_run, splits):
    folder, _, client = noisy_run
    recording = Recording(folder / "recordings" / "split")
    assert recording.phases() == ["train", "val", "inference", "queries"]
    train = recording.read("train", epoch=0)
    assert train["activation"].shape == (384, 500)
    # The labels arrived in the order the single-process trainer draws the batches for this seed.
    order = torch.cat([labels for _, labels in splits.train.loader(64, shuffle=True, seed=0)])
    assert torch.equal(train["labels"], order)
    assert torch.equal(train["batch"], torch.arange(384) // 64)
    images = torch.cat([splits.train.images, splits.val.images, splits.test.images[:300]]).flatten(1)
    for phase, epoch in (("train", 0), ("val", 0), ("inference", None)):
        seen = recording.read(phase, epoch)["activation"].flatten(1)
        assert not _contains_any(seen, images), phase
    assert "saved models/split/client/final.ckpt" in client.stdout()


def _contains_any(rows: torch.Tensor, images: torch.Tensor) -> bool:
    """Whether any row holds any image's pixels as a contiguous run (impossible when rows are shorter)."""
    width = images.shape[1]
    if rows.shape[1] < width:
        return False
    windows = rows.unfold(1, width, 1).reshape(-1, width)
    return bool(torch.cdist(windows, images).min() < 1e-6)


def test_the_noise_was_added_before_sending_at_its_stated_scale(noisy_run, data_root):
    folder, _, _ = noisy_run
    model = join_parties(folder / "models/split/client/final.ckpt", folder / "models/split/server/final.ckpt")
    test = make_splits("fashion-mnist", seed=0, val_size=256, test_size=300, root=data_root).test
    recording = Recording(folder / "recordings" / "split")
    inference = recording.read("inference")
    with torch.no_grad():
        clean = model.client(test.images)
    residual = inference["activation"] - clean
    # Laplace(b): E|n| = b and sd = b·√2; 150 000 draws put both within a few per cent.
    assert residual.abs().mean().item() == pytest.approx(NOISE, rel=0.03)
    assert residual.std().item() == pytest.approx(NOISE * 2**0.5, rel=0.03)
    assert residual.mean().abs().item() < 0.01
    # The server's predictions are its own part's on what it received.
    with torch.no_grad():
        assert torch.equal(inference["predicted"], model.server(inference["activation"]).argmax(dim=1))


def test_two_processes_reach_the_single_process_accuracy(noisy_run, splits):
    folder, _, _ = noisy_run
    row = _rows(folder / "results" / "split.csv")[-1]
    single, _ = train_classifier(splits, noise_scale=NOISE, batch_size=64, max_epochs=1, progress=False)
    reference = evaluate_classifier(single, splits.val)
    assert abs(float(row["val_accuracy"]) - reference["accuracy"]) <= 0.01
    assert float(row["val_accuracy_se"]) > 0 and 0 < float(row["val_dcor"]) <= 1  # one dCor batch: no SE
    assert int(row["n_test"]) == 300 and row["defences"] == single.trained_with()


@pytest.mark.parametrize("shape", ["vanilla", "ushaped"])
def test_without_noise_two_processes_train_exactly_as_one(shape, tmp_path, data_root, splits):
    flags = (*SMALL, "--nopeek-weight", "0.1", *(["--ushaped"] if shape == "ushaped" else []))
    server, client = two_parties(tmp_path, data_root, (*flags, "--queries", "0"), (*flags, "--infer", "0"))
    finish(server, client)
    joined = join_parties(tmp_path / "models/split/client/final.ckpt", tmp_path / "models/split/server/final.ckpt")
    single, _ = train_classifier(splits, nopeek_weight=0.1, batch_size=64, max_epochs=1, progress=False)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(joined.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert not (tmp_path / "recordings" / "split" / "queries-part000.safetensors").exists()
    train = Recording(tmp_path / "recordings" / "split").read("train", 0)
    if shape == "ushaped":  # four messages a step: the server received the activation and its output's gradient
        assert "labels" not in train and train["gradient"].shape == (384, 128)
    else:
        assert sorted(train["labels"].tolist()) == sorted(splits.train.labels.tolist()), "each label once an epoch"


def test_an_attacker_trained_on_the_recording_matches_one_trained_in_process(noisy_run, data_root, monkeypatch):
    folder, _, _ = noisy_run
    monkeypatch.chdir(folder)
    flags = ["--from-recording", "recordings/split", "--max-epochs", "3", "--data-dir", str(data_root)]
    monkeypatch.setattr(sys, "argv", ["train_attacker.py", *flags, "--no-progress"])
    with pytest.raises(SystemExit) as exit_code:
        runpy.run_path(str(REPO / "scripts" / "train_attacker.py"), run_name="__main__")
    assert exit_code.value.code == 0
    recorded = _rows(folder / "results" / "train_attacker.csv")[-1]
    model = join_parties("models/split/client/final.ckpt", "models/split/server/final.ckpt")
    splits = make_splits("fashion-mnist", seed=0, val_size=256, test_size=300, root=data_root)
    training = AttackTraining(max_epochs=3, progress=False)
    attacker = make_attack("decoder").fit(model, splits.aux.subset(600), training, seed=0)
    in_process = evaluate_attack(model, attacker, splits.test, splits.aux.subset(600))
    combined = (float(recorded["attack_ssim_se"]) ** 2 + in_process["attack_ssim_se"] ** 2) ** 0.5
    assert abs(float(recorded["attack_ssim"]) - in_process["attack_ssim"]) <= 2 * combined
    assert int(recorded["n_test"]) == 300


def test_a_killed_party_is_reported_by_the_other_and_both_resume(tmp_path, data_root):
    flags = ("--train-size", "320", "--val-size", "256", "--batch-size", "8", "--max-epochs", "2")
    server, client = two_parties(tmp_path, data_root, (*flags, "--queries", "0"), (*flags, "--infer", "0"))
    client.wait_for("epoch 0:")
    client.kill()  # during epoch 1
    assert server.wait(60) != 0
    assert "the client closed the connection or died" in one_line_error(server)

    resumed = (*flags, "--resume")
    server, client = two_parties(tmp_path, data_root, (*resumed, "--queries", "0"), (*resumed, "--infer", "0"))
    server.wait_for("resuming after epoch 0")
    server.wait_for("epoch 1:")
    finish(server, client)
    assert "resuming after epoch 0" in client.stdout()
    recording = Recording(tmp_path / "recordings" / "split")
    for epoch in (0, 1):
        batches = recording.read("train", epoch)["batch"]
        assert torch.equal(batches, torch.arange(320) // 8), f"epoch {epoch} lost or repeated a step"


def test_a_killed_server_is_reported_by_the_client(tmp_path, data_root):
    flags = ("--train-size", "320", "--val-size", "256", "--batch-size", "8", "--max-epochs", "2")
    server, client = two_parties(tmp_path, data_root, flags, flags)
    server.wait_for("epoch 0:")
    server.kill()
    assert client.wait(60) != 0
    assert "the server closed the connection or died" in one_line_error(client)
    assert (tmp_path / "models/split/client/last.ckpt").is_file()


def test_parties_started_with_other_flags_both_refuse_in_one_line(tmp_path, data_root):
    server, client = two_parties(tmp_path, data_root, (*SMALL, "--seed", "0"), (*SMALL, "--seed", "1"))
    assert server.wait(120) != 0 and client.wait(120) != 0
    assert "seed: 0 here, 1 there" in one_line_error(server)
    assert "seed: 1 here, 0 there" in one_line_error(client)
    assert not (tmp_path / "models").exists() and not (tmp_path / "results" / "split.csv").exists()


def test_a_malformed_message_is_refused_in_one_line(tmp_path, data_root):
    port = free_port()
    server = Party("server", port, tmp_path, data_root, *SMALL)
    with Link.open(f"127.0.0.1:{port}", "client", timeout=60) as link, pytest.raises(TransportError):
        link.send("control", 1, torch.zeros(8))  # float32 where an int64 hello belongs: refused, the server leaves
    assert server.wait(60) != 0
    assert "float32" in one_line_error(server)


def test_defences_that_need_the_single_process_trainer_are_refused():
    fine = ["laplace:scale=0.5", "nopeek:weight=0.1", "class-collapse:weight=1,smoothing=0"]
    assert [d.name for d in two_party_defences(fine)] == ["laplace", "nopeek", "class-collapse"]
    for spec in ("dp:epsilon=4", "suppress:sparse_end=0.5", "vib:beta=0.01", "class-collapse:weight=1,smoothing=0.1"):
        with pytest.raises(ConfigError, match="needs the single-process trainer"):
            two_party_defences([spec])


def test_configs_say_how_they_differ():
    here, there = PartyConfig(seed=0), PartyConfig(seed=1, defences=("laplace:scale=1",))
    assert here.fingerprint() != there.fingerprint() and here.fingerprint() == PartyConfig(seed=0).fingerprint()
    assert PartyConfig(batch_size=32).fingerprint() == here.fingerprint()  # the client's business
    differences = config_differences(here.text(), there.text())
    assert differences == ["defences: none here, laplace(scale=1) there", "seed: 0 here, 1 there"]


def test_the_client_draws_the_batches_the_single_process_trainer_draws(splits, tmp_path):
    party = ClientParty(PartyConfig(batch_size=100), tmp_path, splits, progress=False, log=lambda _: None)
    loader = splits.train.loader(100, shuffle=True, seed=0)
    for epoch in range(3):
        expected = [labels for _, labels in loader]
        assert [labels.tolist() for _, labels in party._epoch_batches(epoch)] == [y.tolist() for y in expected]


def test_recordings_are_cleared_from_an_epoch_and_refuse_foreign_files(tmp_path):
    writer = RecordingWriter(tmp_path, {"dataset": "fashion-mnist"}, part_bytes=100)
    for epoch in range(3):
        writer.add("train", epoch, activation=torch.ones(10, 5), labels=torch.zeros(10, dtype=torch.int64))
        writer.flush("train", epoch)
    writer.add("queries", images=torch.zeros(2, 1, 2, 2))
    writer.flush("queries")
    assert Recording(tmp_path).epochs("train") == [0, 1, 2]
    writer.clear(from_epoch=1)
    assert Recording(tmp_path).epochs("train") == [0] and Recording(tmp_path).phases() == ["train"]
    with pytest.raises(DataError, match="has no val phase of epoch 0"):
        Recording(tmp_path).read("val", 0)
    foreign = tmp_path / "other"
    foreign.mkdir()
    save_file({"x": torch.zeros(2)}, str(foreign / "train-epoch000-part000.safetensors"))
    with pytest.raises(DataError, match="is not a dpsnn recording"):
        Recording(foreign)
    (foreign / "train-epoch000-part000.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(DataError, match="not a readable safetensors file"):
        Recording(foreign)


def test_joining_parts_of_different_runs_is_refused(noisy_run, tmp_path):
    folder, _, _ = noisy_run
    with pytest.raises(CheckpointError, match="not the client's"):
        join_parties(folder / "models/split/server/final.ckpt", folder / "models/split/server/final.ckpt")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["server", "--address", "localhost", "--queries", "0"], "bad address 'localhost'"),
        (["client", "--address", "127.0.0.1:1", "--defence", "dp:epsilon=4"], "needs the single-process trainer"),
        (["server", "--address", "127.0.0.1:1", "--queries", "-1"], "must be a non-negative integer"),
        (["client", "--address", "127.0.0.1:1", "--queries", "5"], "unrecognized arguments: --queries 5"),
        (["client", "--address", "127.0.0.1:1", "--clients", "2", "--client", "2"], "the clients of --clients 2 are"),
        (["server", "--address", "127.0.0.1:1", "--clients", "2", "--resume"], "cannot be resumed"),
        (["server", "--address", "127.0.0.1:1", "--clients", "0"], "must be a positive integer"),
        (["client", "--address", "127.0.0.1:1", "--scheme", "gossip"], "invalid choice: 'gossip'"),
        (["server", "--address", "127.0.0.1:1", "--clients", "2", "--ushaped", "--queries", "0"], "with one client"),
        (["server", "--address", "127.0.0.1:65535", "--clients", "2", "--queries", "0"], "past 65535"),
    ],
)
def test_bad_flags_give_one_line_and_write_nothing(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["split.py", *argv, "--no-progress"])
    with pytest.raises(SystemExit) as exit_code:
        runpy.run_path(str(SPLIT), run_name="__main__")
    assert exit_code.value.code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert list(tmp_path.iterdir()) == []
