"""Several clients and one server (dpsnn.transport.several, scripts/split.py --clients): real processes on loopback.

Each run starts three interpreters and trains the reference network on a few hundred
Fashion-MNIST images split between two clients; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import csv
import socket

import pytest
import torch
from test_transport_parties import Party, finish, free_port, one_line_error

from dpsnn.data import Split
from dpsnn.errors import ConfigError
from dpsnn.transport.parties import PartyConfig, _read_state
from dpsnn.transport.recording import Recording
from dpsnn.transport.several import average_weights, client_address

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN, BATCH = 384, 32  # two clients of 192 images: 6 batches each


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports nothing listens on now (client k meets the server at port + k)."""
    for _ in range(100):
        first = free_port()
        try:
            with contextlib.ExitStack() as stack:
                for offset in range(1, count):
                    probe = stack.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", first + offset))
            return first
        except OSError:
            continue
    raise AssertionError(f"no {count} consecutive free ports")


def several(folder, data_root, scheme: str, epochs: int = 1, extra: tuple[str, ...] = ()) -> list[Party]:
    """A server and two clients of ``scheme``: [server, client 0, client 1]."""
    folder.mkdir(parents=True, exist_ok=True)
    port = consecutive_free_ports(2)
    flags = ("--train-size", str(TRAIN), "--val-size", "256", "--batch-size", str(BATCH), "--max-epochs", str(epochs))
    flags += ("--clients", "2", "--scheme", scheme, "--noise-scale", "0.5", *extra)
    server = Party("server", port, folder, data_root, *flags, "--queries", "200")
    clients = [
        Party("client", port, folder, data_root, *flags, "--client", str(k), "--infer", "200", name=f"client{k}")
        for k in range(2)
    ]
    return [server, *clients]


def client_parts(folder) -> list[dict[str, torch.Tensor]]:
    return [_read_state(folder / f"models/split/client{k}/final.ckpt")["state_dict"] for k in range(2)]


@pytest.mark.parametrize("scheme", ["round-robin", "splitfed"])
def test_two_clients_train_one_server_in_their_scheme(scheme, tmp_path, data_root):
    parties = several(tmp_path, data_root, scheme)
    finish(*parties)
    with (tmp_path / "results" / "split.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1, "client 0 alone writes the results"
    row = rows[0]
    assert (row["clients"], row["scheme"], row["train_size"]) == ("2", scheme, str(TRAIN // 2))
    assert float(row["val_accuracy"]) > 0.3, row  # ten classes: chance is 0.1
    # Every client ends with the same client part: the best epoch's, relayed by the server.
    first, second = client_parts(tmp_path)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    # The server recorded each client's batches, in the scheme's order.
    train = Recording(tmp_path / "recordings" / "split").read("train", 0)
    per_batch = train["client"][::BATCH].tolist()
    batches = TRAIN // 2 // BATCH
    if scheme == "round-robin":  # client 0's whole turn, then client 1's
        assert per_batch == [0] * batches + [1] * batches
    else:  # at once: the server serves their batches in turn
        assert per_batch == [0, 1] * batches
    assert len(train["activation"]) == TRAIN and set(train["labels"].tolist()) <= set(range(10))


def test_a_killed_client_ends_the_run_with_one_line_on_each_side(tmp_path, data_root):
    server, lead, other = several(tmp_path, data_root, "round-robin", epochs=2, extra=("--timeout", "20"))
    lead.wait_for("epoch 0:")
    other.kill()  # its turn in epoch 1 is next, or under way
    assert server.wait(60) != 0 and lead.wait(60) != 0
    assert "client 1 closed the connection or died" in one_line_error(server)
    assert "the server closed the connection or died" in one_line_error(lead)
    assert not (tmp_path / "results" / "split.csv").exists()


def test_averaging_weighs_each_client_by_its_images():
    states = [
        {"w": torch.tensor([0.0, 3.0]), "count": torch.tensor(5)},
        {"w": torch.tensor([3.0, 0.0]), "count": torch.tensor(9)},
    ]
    averaged = average_weights(states, [2, 1])
    assert torch.allclose(averaged["w"], torch.tensor([1.0, 2.0]))
    assert averaged["count"] == 5 and averaged["w"].dtype == torch.float32
    with pytest.raises(ConfigError):
        average_weights(states, [1])


def test_each_client_has_its_own_port_and_its_own_part_of_the_data():
    assert client_address("127.0.0.1:29500", 2) == "127.0.0.1:29502"
    with pytest.raises(ConfigError, match="past 65535"):
        client_address("127.0.0.1:65535", 1)
    split = Split(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    parts = [split.part(k, 3) for k in range(3)]
    assert [len(p) for p in parts] == [4, 3, 3]
    assert torch.equal(torch.cat([p.labels for p in parts]), split.labels), "the parts are disjoint and cover it all"
    with pytest.raises(ConfigError):
        split.part(3, 3)


def test_the_scheme_and_the_number_of_clients_are_agreed_flags():
    one, two = PartyConfig(), PartyConfig(clients=2)
    assert "clients" not in one.agreed(), "a two-party run's agreed flags are unchanged"
    assert (
        two.agreed()["clients"] == "2" and two.fingerprint() != PartyConfig(clients=2, scheme="splitfed").fingerprint()
    )
    with pytest.raises(ConfigError, match="unknown scheme"):
        PartyConfig(clients=2, scheme="gossip")
