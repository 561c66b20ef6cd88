"""Loading the seeds from local directories, the Hub cache, and random init -- for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import SEED_NAMES, TINY, save_checkpoint

from edge_convnext import models
from edge_convnext.errors import CheckpointError
from edge_convnext.labels import imagenet_labels, imagenet_wnids
from edge_convnext.seeds import SEEDS


def _logits(loaded, seed=0):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return loaded.module(x)


def test_labels_are_the_1000_imagenet_classes_in_sorted_wnid_order():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    assert imagenet_labels()[0] == "tench, Tinca tinca"


@pytest.mark.parametrize("name", SEED_NAMES)
def test_local_safetensors_directory_loads_the_saved_weights(tiny_checkpoints, name):
    loaded = models.load(tiny_checkpoints[name])
    hf_class = models.MODEL_CLASSES[SEEDS[name].model_type]
    reference = hf_class.from_pretrained(tiny_checkpoints[name]).eval()
    with torch.inference_mode():
        expected = reference(
            pixel_values=torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        ).logits
    torch.testing.assert_close(_logits(loaded), expected, rtol=0, atol=0)
    assert loaded.model_type == SEEDS[name].model_type
    assert loaded.labels == imagenet_labels()
    assert loaded.source == str(tiny_checkpoints[name])


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    directory = save_checkpoint(tmp_path / "bin", "convnext-tiny-224", bin_format=True, **TINY)
    assert (directory / "pytorch_model.bin").is_file()
    assert not (directory / "model.safetensors").exists()
    assert _logits(models.load(directory)).shape == (2, 1000)


def test_random_init_is_seeded_and_offline():
    a, b = (
        models.random_init("convnext-tiny-224", 3, **TINY),
        models.random_init("facebook/convnext-tiny-224", 3, **TINY),
    )
    c = models.random_init("convnext-tiny-224", 4, **TINY)
    torch.testing.assert_close(_logits(a), _logits(b), rtol=0, atol=0)
    assert not torch.allclose(_logits(a), _logits(c))


def test_full_size_seeds_have_the_published_parameter_counts():
    for name in SEED_NAMES:
        parameters = sum(p.numel() for p in models.random_init(name).module.parameters())
        assert 28.0e6 < parameters < 28.9e6, (name, parameters)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such checkpoint directory"),
        ("no_config", "no config.json"),
        ("no_weights", "no weights"),
        ("bad_json", "not valid JSON"),
        ("not_convnext", "is not a ConvNeXt"),
        ("corrupt_weights", "cannot load model.safetensors"),
    ],
)
def test_broken_checkpoints_raise_clear_errors(tiny_checkpoints, tmp_path, setup, message):
    directory = tmp_path / "checkpoint"
    if setup != "missing":
        shutil.copytree(tiny_checkpoints["convnext-tiny-224"], directory)
    if setup == "no_config":
        (directory / "config.json").unlink()
    elif setup == "no_weights":
        (directory / "model.safetensors").unlink()
    elif setup == "bad_json":
        (directory / "config.json").write_text("{not json")
    elif setup == "not_convnext":
        (directory / "config.json").write_text('{"model_type": "vit"}')
    elif setup == "corrupt_weights":
        (directory / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match=message):
        models.load(directory)


def test_random_init_of_an_unknown_name_lists_the_seeds():
    with pytest.raises(CheckpointError, match="convnext-tiny-224"):
        models.load("resnet50", random=True)


def _run_cli(args, env_extra, cwd):
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "edge_convnext", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_hub_id_resolves_from_the_local_cache_offline(tiny_checkpoints, tmp_path):
    """A Hub cache laid out as huggingface_hub writes it; HF_HUB_OFFLINE=1 must use it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--facebook--convnext-tiny-224"
    shutil.copytree(tiny_checkpoints["convnext-tiny-224"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    photo = os.path.join(os.path.dirname(__file__), "fixtures", "photos", "chelsea.jpg")
    result = _run_cli(
        ["predict", "facebook/convnext-tiny-224", photo, "--json"],
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert '"top_k"' in result.stdout


def test_offline_hub_miss_names_random_init_and_local_dirs(tmp_path):
    result = _run_cli(
        ["predict", "facebook/convnext-tiny-224", "x.jpg"],
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub")},
        tmp_path,
    )
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert "--random-init" in last_line and "local checkpoint directory" in last_line
