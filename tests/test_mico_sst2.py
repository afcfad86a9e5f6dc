"""MICO's SST-2 models: RoBERTa classifiers in transformers' folder format, loaded from local files only.

The published models are RoBERTa-base fine-tunes (``config.json`` and ``pytorch_model.bin`` per model folder,
see ``starting-kit/sst2.ipynb`` and ``training/train_sst2.py`` of microsoft/MICO); their weights cannot be
fetched here, so each test writes a tiny randomly initialised RoBERTa classifier in the same format.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from dpsnn.errors import CheckpointError, ConfigError
from dpsnn.mico.official import load_official_model, official_architecture

transformers = pytest.importorskip("transformers", reason="needs the optional extra dpsnn[sst2]")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    vocab_size=100,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=40,
    num_labels=2,
)


class CreatesFile:
    """A pickle that, when unpickled without restriction, creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def tiny_classifier(seed: int = 0, **changes):
    torch.manual_seed(seed)
    config = transformers.RobertaConfig(**{**TINY, **changes})
    return transformers.RobertaForSequenceClassification(config).eval()


def write_official(model, folder: Path, position_ids: bool = False) -> Path:
    """Write a model folder as MICO's transformers 4.x Trainer did: config.json and torch.save of the state dict.

    ``position_ids`` adds the buffer that transformers saved with the weights until version 4.31.
    """
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    state = dict(model.state_dict())
    if position_ids:
        state["roberta.embeddings.position_ids"] = torch.arange(model.config.max_position_embeddings).expand(1, -1)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def model():
    return tiny_classifier(seed=3)


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(tokens)
    mask[:, -3:] = 0  # padding, as MICO's scoring pads every sentence to 67 tokens
    with torch.no_grad():
        return model(input_ids=tokens, attention_mask=mask).logits


def random_tokens() -> torch.Tensor:
    # 3 … 99: clear of <s> (0), <pad> (1) and </s> (2); 20 tokens fit the 40 positions after the padding offset
    return torch.randint(3, TINY["vocab_size"], (4, 20), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("position_ids", [False, True], ids=["transformers-4.31+", "older-with-position-ids"])
def test_an_official_folder_loads_to_the_same_logits(tmp_path, model, position_ids):
    folder = write_official(model, tmp_path / "sst2_lo" / "dev" / "model_100", position_ids)
    loaded = load_official_model(folder, "sst2_lo")
    assert isinstance(load_official_model(folder / "pytorch_model.bin", "sst2"), type(loaded))  # or its weights
    assert isinstance(loaded, transformers.RobertaForSequenceClassification)
    assert not loaded.training
    tokens = random_tokens()
    expected = logits(model, tokens)
    assert expected.shape == (4, 2)
    assert torch.equal(logits(loaded, tokens), expected)


def test_a_safetensors_folder_loads_too(tmp_path, model):
    folder = tmp_path / "model_0"
    model.save_pretrained(folder)  # transformers 5 writes model.safetensors
    (folder / "pytorch_model.bin").unlink(missing_ok=True)
    assert (folder / "model.safetensors").is_file()
    tokens = random_tokens()
    assert torch.equal(logits(load_official_model(folder, "sst2"), tokens), logits(model, tokens))

    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="damaged or not a safetensors file"):
        load_official_model(folder, "sst2")


def test_damaged_or_mismatched_weights_are_one_clear_error(tmp_path, model):
    folder = write_official(model, tmp_path / "model_1")
    weights = folder / "pytorch_model.bin"
    content = weights.read_bytes()
    weights.write_bytes(content[: len(content) // 2])
    with pytest.raises(CheckpointError, match="pytorch_model.bin: damaged or not a PyTorch file") as caught:
        load_official_model(folder, "sst2")
    assert "\n" not in str(caught.value)

    # weights of another size than config.json describes
    torch.save(tiny_classifier(hidden_size=8).state_dict(), weights)
    with pytest.raises(CheckpointError, match=r"roberta.embeddings.word_embeddings.weight has shape \(100, 8\)"):
        load_official_model(folder, "sst2")

    state = dict(model.state_dict())
    del state["classifier.out_proj.bias"]
    torch.save(state, weights)
    with pytest.raises(CheckpointError, match="classifier.out_proj.bias is missing; not a MICO sst2 model"):
        load_official_model(folder, "sst2")

    torch.save({**model.state_dict(), "roberta.pooler.dense.weight": torch.zeros(16, 16)}, weights)
    with pytest.raises(CheckpointError, match="unexpected entry roberta.pooler.dense.weight"):
        load_official_model(folder, "sst2")

    positions = torch.arange(TINY["max_position_embeddings"]).expand(1, -1).flip(1)
    torch.save({**model.state_dict(), "roberta.embeddings.position_ids": positions}, weights)
    with pytest.raises(CheckpointError, match="position_ids is not 0"):
        load_official_model(folder, "sst2")

    weights.unlink()
    with pytest.raises(CheckpointError, match="no model file there"):
        load_official_model(folder, "sst2")


def test_code_in_the_weights_is_never_run(tmp_path, model):
    folder = write_official(model, tmp_path / "model_2")
    marker = tmp_path / "created-by-the-checkpoint"
    torch.save({**model.state_dict(), "classifier.dense.bias": CreatesFile(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused without running it"):
        load_official_model(folder, "sst2")
    assert not marker.exists()

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(CreatesFile(marker), protocol=2))
    with pytest.raises(CheckpointError, match="refused without running it"):
        load_official_model(folder, "sst2")
    assert not marker.exists()


def test_the_configuration_is_checked(tmp_path, model):
    folder = write_official(model, tmp_path / "model_3")
    config = json.loads((folder / "config.json").read_text())

    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type is 'bert', MICO's sst2 models are 'roberta'"):
        load_official_model(folder, "sst2")

    labels = {str(i): f"LABEL_{i}" for i in range(3)}
    (folder / "config.json").write_text(json.dumps({**config, "id2label": labels}))
    with pytest.raises(CheckpointError, match="3 labels, MICO's sst2 models classify into 2"):
        load_official_model(folder, "sst2")

    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not a JSON model configuration"):
        load_official_model(folder, "sst2")

    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: no model configuration there"):
        load_official_model(folder, "sst2")

    with pytest.raises(ConfigError, match="not a folder; .*config.json"):
        load_official_model(tmp_path / "missing", "sst2_inf")
    with pytest.raises(ConfigError, match="config.json sets"):
        official_architecture("sst2")
