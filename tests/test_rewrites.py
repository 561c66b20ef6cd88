"""Every rewrite keeps fp32 logits within 1e-5 of the original on real photos."""

from __future__ import annotations

import pytest
import torch
from conftest import SEED_NAMES

from edge_convnext import rewrites, targets
from edge_convnext.errors import UnsupportedError
from edge_convnext.testing import nontrivial_model


@pytest.mark.slow
@pytest.mark.parametrize("seed_name", SEED_NAMES)
@pytest.mark.parametrize("rewrite", sorted(rewrites.REWRITES))
def test_rewrite_keeps_logits(seed_name, rewrite, photo_batch):
    loaded = nontrivial_model(seed_name)
    rewritten = rewrites.apply(loaded.module, (rewrite,))
    with torch.inference_mode():
        before, after = loaded.module(photo_batch), rewritten(photo_batch)
    assert before.std() > 0.1  # blocks matter: logits are not near-constant
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_rewrites_swap_the_intended_modules_and_leave_the_input_alone():
    loaded = nontrivial_model(
        "convnextv2-tiny-1k-224", depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64]
    )
    rewritten = rewrites.apply(loaded.module, targets.PORTABLE_REWRITES)
    kinds = lambda m: {type(x).__name__ for x in m.modules()}  # noqa: E731
    assert "ConvNextV2GRN" in kinds(loaded.module) and "SumSquaresGRN" not in kinds(loaded.module)
    assert "ConvNextV2GRN" not in kinds(rewritten) and "SumSquaresGRN" in kinds(rewritten)
    assert rewritten.hf_model.convnextv2.layernorm.eps == rewrites.SAFE_EPS
    assert loaded.hf_model.convnextv2.layernorm.eps == 1e-12


def test_unknown_rewrite_lists_the_valid_ones():
    with pytest.raises(UnsupportedError, match="grn-sum-squares"):
        rewrites.apply(torch.nn.Identity(), ("fuse-everything",))
