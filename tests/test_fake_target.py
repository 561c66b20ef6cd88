"""Adding a target = one module + one ``register`` line: a target defined only here (a
``torch.export`` program saved as ``.pt2``, run by ``torch.export.load``) shows up in the CLI
(``export --help``, ``export``, ``predict``, ``inspect``) and in the flow tests, and nothing
outside this module knows about it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import real_images
from test_targets import check_flow, flows

from edge_convnext import cli, targets
from edge_convnext.targets.base import NO_QUANTIZATION, Target
from edge_convnext.targets.runner import ArtifactRunner


class ProgramRunner(ArtifactRunner):
    target = "pt2"

    def __init__(self, path: Path):
        super().__init__(path)
        self.program = torch.export.load(str(path)).module()

    def run_contract_input(self, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.program(torch.from_numpy(batch)).numpy()


class Pt2Target(Target):
    name = "pt2"
    suffixes = (".pt2",)
    recipes = ("fp32",)
    toolchain = "torch"
    artifact = "`.pt2`"
    converter = "`torch.export.save`"
    runtime = "`torch.export.load`"

    def export(self, model, recipe, out_dir, contract, quantization=NO_QUANTIZATION, **_):
        from edge_convnext.targets import lowering

        self.check(recipe)
        module = lowering.with_contract(model, contract)
        program = torch.export.export(
            module, (lowering.example_input(contract, model.preprocessing),)
        )

        def save(path: Path) -> None:
            torch.export.save(program, str(path))

        return lowering.write_artifact(model, recipe, contract, self, out_dir, save)

    def load(self, path, threads=None):
        return ProgramRunner(path)

    def describe(self, path):
        program = torch.export.load(str(path))
        return {"nodes": len(program.graph.nodes)}


@pytest.fixture
def pt2_target():
    targets.register(Pt2Target())
    yield
    targets.unregister("pt2")


def test_the_cli_offers_and_runs_a_registered_target(
    pt2_target, tiny_checkpoints, tmp_path, capsys
):
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    help_text = capsys.readouterr().out
    assert "pt2" in help_text and ".pt2" in help_text
    checkpoint = str(tiny_checkpoints["convnext-tiny-224"])
    assert cli.main(["export", checkpoint, "--target", "pt2", "-o", str(tmp_path)]) == 0
    artifact = Path(capsys.readouterr().out.strip())
    assert artifact.name == "convnext-tiny-224.fp32.app.pt2" and artifact.is_file()
    photos = [str(p) for p in real_images()]
    assert cli.main(["predict", str(artifact), *photos, "--json"]) == 0
    from_artifact = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert cli.main(["predict", checkpoint, *photos, "--json"]) == 0
    from_checkpoint = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for ours, theirs in zip(from_artifact, from_checkpoint, strict=True):
        assert [t["index"] for t in ours["top_k"]] == [t["index"] for t in theirs["top_k"]]
    assert cli.main(["inspect", str(artifact), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["manifest"]["target"] == "pt2" and info["runtime"]["nodes"] > 10
    assert cli.main(["export", checkpoint, "--target", "pt2", "--recipe", "w8a8"]) == 2
    assert "pt2: fp32" in capsys.readouterr().err


def test_the_flow_tests_pick_up_a_registered_target(pt2_target, tiny_checkpoints, tmp_path):
    ours = [flow for flow in flows() if flow.target == "pt2"]
    assert {flow.contract for flow in ours} == {"app", "float-nchw"}
    for flow in ours:
        check_flow(flow, tiny_checkpoints["convnextv2-tiny-1k-224"], tmp_path / flow.contract)


def test_the_readme_table_is_the_registry(pt2_target):
    assert "| `pt2` | `.pt2` |" in targets.markdown_table()
    targets.unregister("pt2")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert targets.markdown_table() in readme
