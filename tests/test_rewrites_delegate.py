"""The XNNPACK delegate rewrites: same logits, and the graph shape the delegates need.

``tests/test_rewrites.py`` already checks every rewrite alone on full-size seeds and real photos;
these tests check the combination, the pieces' own maths, and that the exported graph has no
LayerNorm, no permutes and no depthwise conv too large for XNNPACK's DWConv kernels.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SEED_NAMES, TINY
from torch import nn

from edge_convnext import rewrites, targets
from edge_convnext.testing import nontrivial_model

DELEGATE = targets.XNNPACK_REWRITES


def test_every_target_lowers_known_rewrites_and_the_portable_ones_first():
    for target, names in ((t, targets.get(t).rewrites) for t in targets.names()):
        rewrites.check(names)
        assert names[: len(targets.PORTABLE_REWRITES)] == targets.PORTABLE_REWRITES, target


@pytest.mark.parametrize("kernel", [7, 9, 11])
def test_split_depthwise_conv_equals_the_conv_with_parts_of_at_most_25_taps(kernel):
    torch.manual_seed(kernel)
    conv = nn.Conv2d(8, 8, kernel, padding=kernel // 2, groups=8).eval()
    split = rewrites.SplitDepthwiseConv(conv)
    x = torch.randn(2, 8, 13, 11)
    torch.testing.assert_close(split(x), conv(x), rtol=0, atol=1e-5)
    taps = [part.kernel_size[0] * part.kernel_size[1] for part in split.parts]
    assert sum(taps) == kernel * kernel and max(taps) <= rewrites.XNNPACK_DWCONV_MAX_TAPS


def test_channel_norm_matches_layernorm_over_channels():
    torch.manual_seed(0)
    layernorm = nn.LayerNorm(24, eps=1e-6)
    nn.init.normal_(layernorm.weight)
    nn.init.normal_(layernorm.bias)
    x = torch.randn(2, 24, 5, 7) * 3 + 1
    expected = layernorm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(rewrites.ChannelNorm.from_layernorm(layernorm)(x), expected)


@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_delegate_rewrites_keep_logits_on_tiny_models(seed_name):
    loaded = nontrivial_model(seed_name, **TINY)
    rewritten = rewrites.apply(loaded.module, DELEGATE)
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(rewritten(x), loaded.module(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_exported_graph_has_only_delegate_friendly_ops(seed_name):
    loaded = nontrivial_model(seed_name, **TINY)
    rewritten = rewrites.apply(loaded.module, DELEGATE)
    graph = torch.export.export(rewritten, (torch.randn(1, 3, 64, 64),)).run_decompositions({})
    targets = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    assert not [t for t in targets if "layer_norm" in t or "permute" in t or "linalg" in t]
    for node in graph.graph.nodes:
        if node.op == "call_function" and "convolution" in str(node.target):
            weight = node.args[1].meta["val"]
            if weight.shape[1] == 1:  # depthwise
                assert weight.shape[2] * weight.shape[3] <= rewrites.XNNPACK_DWCONV_MAX_TAPS
    means = [n for n in graph.graph.nodes if n.op == "call_function" and "mean" in str(n.target)]
    assert means and all(n.args[2] is True for n in means)  # keepdim: global average pooling


@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_smoothquant_balance_is_exact_and_evens_out_pwconv2_input_ranges(seed_name):
    from edge_convnext.quantize.balance import balance_hidden, blocks

    loaded = nontrivial_model(seed_name, **TINY)
    rewritten = rewrites.apply(loaded.module, DELEGATE).eval()
    batches = [torch.randn(1, 3, 64, 64) for _ in range(3)]
    balanced = balance_hidden(rewritten, batches[:1], alpha=1.0)  # scored on the same batch

    def run(model):
        seen = []
        hooks = [
            b.pwconv2.register_forward_pre_hook(
                lambda _m, args: seen.append(args[0].abs().amax(dim=(0, 2, 3)))
            )
            for b in blocks(model)
        ]
        with torch.inference_mode():
            out = model(batches[0])
        for hook in hooks:
            hook.remove()
        return out, max((r.max() / r.min().clamp(min=1e-6)).item() for r in seen)

    (before, spread_before), (after, spread_after) = run(rewritten), run(balanced)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert spread_after < spread_before / 2
    assert all(b.hidden_scale is None for b in blocks(rewritten))  # the input is untouched


def test_grn_balancing_is_exact():
    loaded = nontrivial_model("convnextv2-tiny-1k-224", **TINY)
    rewritten = rewrites.apply(loaded.module, DELEGATE)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        before = rewritten(x)
    for block in rewritten.modules():
        if isinstance(block, rewrites.PointwiseConvBlock):
            block.balance_hidden(torch.rand(block.pwconv2.in_channels) * 4 + 0.25)
    with torch.inference_mode():
        torch.testing.assert_close(rewritten(x), before, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_delegate_rewrites_keep_logits_on_photos(seed_name, photo_batch):
    loaded = nontrivial_model(seed_name)
    rewritten = rewrites.apply(loaded.module, DELEGATE)
    with torch.inference_mode():
        before, after = loaded.module(photo_batch), rewritten(photo_batch)
    assert before.std() > 0.1
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_xnnpack_takes_the_whole_rewritten_graph(seed_name):
    pytest.importorskip("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    loaded = nontrivial_model(seed_name, **TINY)
    rewritten = rewrites.apply(loaded.module, DELEGATE)
    program = torch.export.export(rewritten, (torch.randn(1, 3, 64, 64),))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    info = get_delegation_info(edge.exported_program().graph_module)
    fallback = {k for k, v in info.delegation_by_operator.items() if v.non_delegated}
    assert info.num_delegated_subgraphs == 1 and fallback <= {"getitem"}
