"""Named module swaps that make ConvNeXt lower well to edge runtimes, logits unchanged.

Each rewrite is data -- a name, what it matches, what it puts in its place -- and is tested to
keep fp32 logits within 1e-5 of the original on real images (``tests/test_rewrites.py``).
transformers >= 5 already writes the channels-first LayerNorm as ``permute -> nn.LayerNorm ->
permute`` (one fused op), so no rewrite is needed for it.

Targets list the rewrites they want (``edge_convnext.targets.<t>.REWRITES``); :func:`apply`
returns a rewritten copy and leaves the input model alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from .errors import UnsupportedError, choices

# fp16's smallest subnormal is ~6e-8, so the head LayerNorm's eps=1e-12 becomes exactly 0 in fp16
# (a constant feature vector then divides by zero). 1e-7 is the smallest power of ten fp16 keeps,
# and small enough next to the pooled variance to move logits by < 1e-5.
SAFE_EPS = 1e-7


class SumSquaresGRN(nn.Module):
    """ConvNeXt V2 Global Response Normalization with plain ops (no ``linalg.vector_norm``).

    ``x: (N, H, W, C)``. ``G = sqrt(sum_hw x^2)``; ``N = G / (mean_c G + 1e-6)``;
    ``y = gamma * (x * N) + beta + x``. Same math as transformers' ``ConvNextV2GRN``, written as
    mul / sum / sqrt / mean / div that converters and delegates know.
    """

    def __init__(self, grn: nn.Module):
        super().__init__()
        self.weight = grn.weight
        self.bias = grn.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global_features = torch.sqrt(torch.sum(x * x, dim=(1, 2), keepdim=True))
        norm_features = global_features / (global_features.mean(dim=-1, keepdim=True) + 1e-6)
        return self.weight * (x * norm_features) + self.bias + x


def _is_grn(module: nn.Module) -> bool:
    return type(module).__name__ == "ConvNextV2GRN"


def _is_head_layernorm(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.LayerNorm) and name.endswith("layernorm") and module.eps < SAFE_EPS


def _safe_eps_layernorm(layernorm: nn.LayerNorm) -> nn.LayerNorm:
    replacement = copy.deepcopy(layernorm)
    replacement.eps = SAFE_EPS
    return replacement


# --- Rewrites for XNNPACK delegates (ExecuTorch, LiteRT) -------------------------------------
# XNNPACK runs depthwise convolutions of at most 25 taps with its DWConv microkernels; a 7x7
# (49 taps) depthwise conv falls back to a grouped IGEMM that is ~15x slower (6.3 ms vs 0.4 ms
# at 96x56x56, 1 thread), and that alone was 60-70% of the fp32/int8 run time. XNNPACK has no
# LayerNorm and its mean.dim only reduces H and W of a 4-D tensor, so LayerNorm over channels
# is written with 1x1 convolutions, which it runs as GEMMs (bench/FINDINGS.md).
XNNPACK_DWCONV_MAX_TAPS = 25


def _constant_mean_kernel(channels: int) -> torch.Tensor:
    return torch.full((1, channels, 1, 1), 1.0 / channels)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of an NCHW tensor, with ops every XNNPACK delegate takes.

    ``mean_c`` is a 1x1 convolution with a constant ``1/C`` kernel (a GEMM with one output
    channel), so ``y = (x - mean_c x) * rsqrt(mean_c (x - mean_c x)^2 + eps)``, then the optional
    per-channel affine. Works on ``(N, C, H, W)``, including the pooled ``(N, C, 1, 1)`` head.
    Quantizers should leave it in float (its statistics need more than 8 bits).
    """

    def __init__(
        self,
        channels: int,
        eps: float,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean_kernel", _constant_mean_kernel(channels))
        self.weight = None if weight is None else nn.Parameter(_per_channel(weight))
        self.bias = None if bias is None else nn.Parameter(_per_channel(bias))

    @classmethod
    def from_layernorm(cls, layernorm: nn.LayerNorm) -> ChannelNorm:
        """The same normalization, affine included, from a (channels-first) ``nn.LayerNorm``."""
        return cls(layernorm.normalized_shape[0], layernorm.eps, layernorm.weight, layernorm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - F.conv2d(x, self.mean_kernel)
        variance = F.conv2d(centered * centered, self.mean_kernel)
        normalized = centered * torch.rsqrt(variance + self.eps)
        if self.weight is None:
            return normalized
        return normalized * self.weight + self.bias


def _per_channel(vector: torch.Tensor) -> torch.Tensor:
    return vector.detach().reshape(1, -1, 1, 1).clone()


def _pointwise_conv(
    linear: nn.Linear,
    in_scale: torch.Tensor | None = None,
    in_shift: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
) -> nn.Conv2d:
    """``linear(x * in_scale + in_shift) * out_scale`` as one 1x1 conv (folded in float64)."""
    weight = linear.weight.detach().double()
    bias = linear.bias.detach().double()
    if in_shift is not None:
        bias = bias + weight @ in_shift.detach().double().reshape(-1)
    if in_scale is not None:
        weight = weight * in_scale.detach().double().reshape(1, -1)
    if out_scale is not None:
        scale = out_scale.detach().double().reshape(-1)
        weight, bias = weight * scale[:, None], bias * scale
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1)
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(*weight.shape, 1, 1))
        conv.bias.copy_(bias)
    return conv


class SplitDepthwiseConv(nn.Module):
    """A large depthwise conv as a sum of depthwise convs of at most 25 taps each.

    For a ``K x K`` kernel (K odd, 'same' padding, stride 1) the kernel rows are split into the
    centre band ``-m..m`` and pairs ``{-j, +j}`` taken with dilation ``2j``: for 7x7 that is
    3x7 + 2x7 (dilation 4) + 2x7 (dilation 6) = 49 taps, each part on XNNPACK's DWConv kernels.
    The sum equals the original conv up to float rounding (the bias is added once).
    """

    def __init__(self, conv: nn.Conv2d, max_taps: int = XNNPACK_DWCONV_MAX_TAPS):
        super().__init__()
        kernel = conv.kernel_size[0]
        radius = kernel // 2
        centre = max(0, (max_taps // kernel - 1) // 2)
        row_groups = [list(range(-centre, centre + 1))]
        row_groups += [[-j, j] for j in range(centre + 1, radius + 1)]
        self.parts = nn.ModuleList(
            _depthwise_rows(conv, rows, with_bias=index == 0)
            for index, rows in enumerate(row_groups)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.parts[0](x)
        for part in self.parts[1:]:
            out = out + part(x)
        return out


def _depthwise_rows(conv: nn.Conv2d, rows: list[int], with_bias: bool) -> nn.Conv2d:
    """The rows ``rows`` (offsets from the centre, evenly spaced) of a depthwise conv."""
    kernel, radius = conv.kernel_size[0], conv.kernel_size[0] // 2
    part = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        (len(rows), kernel),
        padding=(-rows[0], radius),
        dilation=(rows[1] - rows[0] if len(rows) > 1 else 1, 1),
        groups=conv.groups,
        bias=with_bias and conv.bias is not None,
    )
    with torch.no_grad():
        part.weight.copy_(conv.weight[:, :, [row + radius for row in rows], :])
        if part.bias is not None:
            part.bias.copy_(conv.bias)
    return part


def _is_large_depthwise(module: nn.Module) -> bool:
    if type(module) is not nn.Conv2d:
        return False
    kernel_h, kernel_w = module.kernel_size
    return (
        module.groups == module.in_channels == module.out_channels
        and kernel_h == kernel_w
        and kernel_h % 2 == 1
        and kernel_h * kernel_w > XNNPACK_DWCONV_MAX_TAPS
        and 2 * kernel_w <= XNNPACK_DWCONV_MAX_TAPS
        and module.stride == (1, 1)
        and module.dilation == (1, 1)
        and module.padding == (kernel_h // 2, kernel_w // 2)
        and module.padding_mode == "zeros"
    )


class GRNScale(nn.Module):
    """ConvNeXt V2 GRN on NCHW as one multiply: ``y = x * (gamma * N(x) + 1)``.

    ``G = sqrt(HW * mean_hw x^2)`` (XNNPACK's global average pooling),
    ``N = G / (mean_c G + 1e-6)`` (mean over channels as a 1x1 conv), and GRN's ``beta`` is
    folded into the next 1x1 conv's bias by :class:`PointwiseConvBlock`. ``output_scale`` (1 by
    default) divides output channels; :meth:`PointwiseConvBlock.balance_hidden` moves it into
    the next conv so per-tensor int8 quantization sees channels of similar range.
    """

    def __init__(self, gamma: torch.Tensor):
        super().__init__()
        channels = gamma.numel()
        self.gamma = nn.Parameter(_per_channel(gamma))
        self.register_buffer("output_scale", torch.ones(1, channels, 1, 1))
        self.register_buffer("mean_kernel", _constant_mean_kernel(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = float(x.shape[2] * x.shape[3])  # a float scalar: an int one becomes a cast op
        global_features = torch.sqrt(torch.mean(x * x, dim=(2, 3), keepdim=True) * pixels)
        norm = global_features / (F.conv2d(global_features, self.mean_kernel) + 1e-6)
        return x * (self.gamma * norm + self.output_scale)


class PointwiseConvBlock(nn.Module):
    """A ConvNeXt (V1 or V2) block kept in NCHW, pointwise layers as 1x1 convs.

    ``x + pwconv2(grn(act(pwconv1(norm(dwconv(x))))))``: no permutes; the LayerNorm affine is
    folded into ``pwconv1``, the layer scale (V1) and GRN ``beta`` (V2) into ``pwconv2``; the
    norm is a :class:`ChannelNorm` and V2's GRN a :class:`GRNScale`. XNNPACK then takes the
    whole network as one partition, and quantizers can target ``pwconv1``/``pwconv2`` (97% of
    the MACs) by name. Inference only (drop-path is dropped).
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        layernorm = layer.layernorm
        self.dwconv = layer.dwconv
        self.norm = ChannelNorm(layernorm.normalized_shape[0], layernorm.eps)
        self.pwconv1 = _pointwise_conv(layer.pwconv1, layernorm.weight, layernorm.bias)
        self.act = layer.act
        grn = getattr(layer, "grn", None)
        self.grn = None if grn is None else GRNScale(grn.weight)
        self.pwconv2 = _pointwise_conv(
            layer.pwconv2,
            in_shift=None if grn is None else grn.bias,
            out_scale=getattr(layer, "layer_scale_parameter", None),
        )
        self.register_buffer("hidden_scale", None)  # set by balance_hidden (V1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.pwconv1(self.norm(self.dwconv(x))))
        if self.grn is not None:
            hidden = self.grn(hidden)
        elif self.hidden_scale is not None:
            hidden = hidden * self.hidden_scale
        return x + self.pwconv2(hidden)

    @torch.no_grad()
    def balance_hidden(self, channel_scale: torch.Tensor) -> None:
        """Divide hidden channel c (pwconv2's input) by ``channel_scale[c]``, scale pwconv2 by it.

        Exact in real arithmetic (fp32 logits move by ~1e-6). V2 folds the division into GRN's
        multiply; V1 gets a per-channel multiply after GELU, which also keeps converters from
        fusing GELU into an int8 op that XNNPACK does not run. Used by ``quantize.balance`` so
        per-tensor int8 activations see channels of similar range.
        """
        scale = channel_scale.detach().reshape(1, -1, 1, 1).to(self.pwconv2.weight.dtype)
        if self.grn is not None:
            self.grn.gamma.div_(scale)
            self.grn.output_scale.div_(scale)
        elif self.hidden_scale is None:
            self.hidden_scale = 1.0 / scale
        else:
            self.hidden_scale.div_(scale)
        self.pwconv2.weight.mul_(scale)


def _is_convnext_block(module: nn.Module) -> bool:
    return type(module).__name__ in ("ConvNextLayer", "ConvNextV2Layer")


def _is_channels_first_layernorm(module: nn.Module) -> bool:
    return (
        type(module).__name__ in ("ConvNextLayerNorm", "ConvNextV2LayerNorm")
        and module.data_format == "channels_first"
    )


class PooledHeadClassifier(nn.Module):
    """ConvNeXt classifier whose head pools with ``keepdim`` and classifies with a 1x1 conv.

    ``logits = flatten(classifier(norm(mean_hw(features, keepdim=True))))``: the pooling is
    XNNPACK's global average pooling (``mean.dim`` without keepdim is not delegated), the final
    LayerNorm a :class:`ChannelNorm` whose affine is folded into the classifier. Reuses the
    wrapped model's embeddings and encoder; returns an object with ``logits`` like transformers.
    """

    def __init__(self, classifier_model: nn.Module):
        super().__init__()
        backbone = getattr(classifier_model, classifier_model.base_model_prefix)
        layernorm = backbone.layernorm
        self.config = classifier_model.config
        self.embeddings = backbone.embeddings
        self.encoder = backbone.encoder
        self.norm = ChannelNorm(layernorm.normalized_shape[0], layernorm.eps)
        self.classifier = _pointwise_conv(
            classifier_model.classifier, layernorm.weight, layernorm.bias
        )

    def forward(self, pixel_values: torch.Tensor) -> ImageClassifierOutputWithNoAttention:
        features = self.encoder(self.embeddings(pixel_values)).last_hidden_state
        pooled = self.norm(features.mean(dim=(2, 3), keepdim=True))
        return ImageClassifierOutputWithNoAttention(logits=self.classifier(pooled).flatten(1))


def _is_convnext_classifier(module: nn.Module) -> bool:
    return type(module).__name__ in (
        "ConvNextForImageClassification",
        "ConvNextV2ForImageClassification",
    ) and isinstance(getattr(module, "classifier", None), nn.Linear)


@dataclass(frozen=True)
class Rewrite:
    """A module swap: every submodule for which ``matches(module, name)`` holds is replaced."""

    name: str
    description: str
    matches: Callable[[nn.Module, str], bool]
    replace: Callable[[nn.Module], nn.Module]


REWRITES: dict[str, Rewrite] = {
    rewrite.name: rewrite
    for rewrite in (
        Rewrite(
            "head-layernorm-eps",
            "final LayerNorm eps 1e-12 -> 1e-7, which fp16 can represent",
            _is_head_layernorm,
            _safe_eps_layernorm,
        ),
        Rewrite(
            "grn-sum-squares",
            "V2 GRN: linalg.vector_norm -> sqrt(sum(x*x)), ops every converter lowers",
            lambda module, name: _is_grn(module),
            SumSquaresGRN,
        ),
        Rewrite(
            "split-depthwise-conv",
            "depthwise KxK conv (7x7: 49 taps) -> sum of <=25-tap depthwise convs, which XNNPACK "
            "runs with DWConv kernels instead of a ~15x slower grouped IGEMM",
            lambda module, name: _is_large_depthwise(module),
            SplitDepthwiseConv,
        ),
        Rewrite(
            "pointwise-conv-blocks",
            "ConvNeXt blocks in NCHW with 1x1 convs, LayerNorm as 1x1-conv means, LN affine and "
            "layer scale/GRN beta folded into the convs: no permutes, no native_layer_norm",
            lambda module, name: _is_convnext_block(module),
            PointwiseConvBlock,
        ),
        Rewrite(
            "channels-first-layernorm",
            "stem/downsampling LayerNorms (channels_first) -> ChannelNorm (1x1-conv means)",
            lambda module, name: _is_channels_first_layernorm(module),
            ChannelNorm.from_layernorm,
        ),
        Rewrite(
            "pooled-head",
            "head: mean over H, W with keepdim, LayerNorm as ChannelNorm with its affine "
            "folded into the classifier (a 1x1 conv)",
            lambda module, name: _is_convnext_classifier(module),
            PooledHeadClassifier,
        ),
    )
}
# What every target and recipe gets: fp16-safe head eps, GRN in ops every converter knows.


def check(names: tuple[str, ...]) -> None:
    """Raise UnsupportedError (listing the valid names) if any of ``names`` is not a rewrite."""
    unknown = [name for name in names if name not in REWRITES]
    if unknown:
        raise UnsupportedError(f"unknown rewrites {unknown}; valid: {choices(REWRITES)}")


def apply(model: nn.Module, names: tuple[str, ...], inplace: bool = False) -> nn.Module:
    """Apply the named rewrites to ``model`` (a copy unless ``inplace``) and return it.

    Which rewrites a target lowers is a target's fact (``Target.rewrites_for``;
    ``targets.PORTABLE_REWRITES`` are the ones every converter takes).
    """
    check(names)
    model = model if inplace else copy.deepcopy(model)
    for name in names:
        _swap(model, REWRITES[name])
    return model


def _swap(model: nn.Module, rewrite: Rewrite) -> None:
    targets = [(n, m) for n, m in model.named_modules() if n and rewrite.matches(m, n)]
    for qualified_name, module in targets:
        parent_name, _, child_name = qualified_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, rewrite.replace(module))
