"""Fake targets for the build tests: a fast ``torch.save`` target, one whose converter fails,
and a slow one that dies (or sleeps) half-way through writing its file. Importable by a
subprocess (``python tests/build_fakes.py ARGS``: register them, then run the CLI)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edge_convnext.targets.base import NO_QUANTIZATION, Target
from edge_convnext.targets.runner import ArtifactRunner


class PickleRunner(ArtifactRunner):
    target = "fake"

    def __init__(self, path: Path):
        super().__init__(path)
        self.module = torch.load(str(path), weights_only=False)

    def run_contract_input(self, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(batch)).numpy()


class FakeTarget(Target):
    """``torch.save`` of the contract-wrapped module: fp32 and an fp16 round trip of weights."""

    name = "fake"
    suffixes = (".fake",)
    recipes = ("fp32", "fp16")
    bundle_dir = "fakeapp"
    toolchain = "torch"
    artifact = "`.fake`"
    converter = "`torch.save`"
    runtime = "`torch.load`"
    exports = 0  # how many exports ran (tests count rebuilds)

    def export(self, model, recipe, out_dir, contract, quantization=NO_QUANTIZATION, **_):
        import copy

        from edge_convnext.targets import lowering

        self.check(recipe)
        FakeTarget.exports += 1
        module = copy.deepcopy(lowering.with_contract(model, contract))
        if recipe.name == "fp16":
            module = module.half().float()
        self.before_write(recipe)

        def save(path: Path) -> None:
            torch.save(module, str(path))
            self.after_write(path, recipe)

        return lowering.write_artifact(model, recipe, contract, self, out_dir, save)

    def before_write(self, recipe) -> None:
        pass

    def after_write(self, path: Path, recipe) -> None:
        pass

    def load(self, path, threads=None):
        return PickleRunner(path)

    def describe(self, path):
        return {"bytes": Path(path).stat().st_size}


class BrokenTarget(FakeTarget):
    """A converter that always fails."""

    name = "broken"
    suffixes = (".broken",)
    recipes = ("fp32",)
    bundle_dir = "brokenapp"

    def before_write(self, recipe) -> None:
        raise RuntimeError("converter exploded: unsupported op aten::gelu (fake)")


class SlowTarget(FakeTarget):
    """Writes its fp16 file slowly: the file is half there while ``EDGE_CONVNEXT_SLOW`` is set,
    so a test can kill the build mid-export."""

    name = "slow"
    suffixes = (".slow",)
    bundle_dir = "slowapp"

    def after_write(self, path: Path, recipe) -> None:
        marker = os.environ.get("EDGE_CONVNEXT_SLOW")
        if marker and recipe.name == "fp16":
            Path(marker).write_text(str(path))  # "now writing": the test kills us here
            time.sleep(120)


if __name__ == "__main__":
    from edge_convnext import cli, targets

    for fake in (FakeTarget(), SlowTarget()):
        targets.register(fake)
    sys.exit(cli.main(sys.argv[1:]))
