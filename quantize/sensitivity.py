"""Per-layer sensitivity: how much each layer alone hurts the logits when quantized, and the
fewest layers to keep in higher precision for a target SNR.

For every Conv2d/Linear, that layer's weights are fake-quantized on the grid the targets ship
(``quantize.gptq``: per output channel int8, or int4 in groups of 32) and its input as the
recipe's activations are (per tensor affine int8, min/max over the calibration images; or per
row, as dynamic activations are at run time) while the rest of the model stays float; the SQNR
of the logits against the float model ranks the layers. It is target-independent and cheap (one
pass per layer), and it tells which layers to keep in higher precision (``export --keep-float
N``); :func:`fewest_kept` searches the smallest such N for a target SNR (``export --target-snr
DB``, measured on calibration images held back from the quantizer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from edge_convnext.progress import bar

from .gptq import INT8, Grid, fake_quantize_weight
from .ptq import in_layers, run_with_input_hooks


@dataclass(frozen=True)
class LayerSensitivity:
    """``sqnr_db``: logits SQNR with only this layer quantized (lower = more sensitive)."""

    name: str
    kind: str
    sqnr_db: float

    def to_dict(self) -> dict:
        return asdict(self)


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """``10 log10(|ref|^2 / |ref - approx|^2)`` over all elements, in dB (inf if identical)."""
    noise = (reference - approximation).double().pow(2).sum()
    signal = reference.double().pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(signal / noise))


def fake_quantize_activation(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Per-tensor affine int8 over ``[low, high]`` (widened to include 0)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / 255
    zero_point = round(-128 - low / scale)
    q = (x / scale).round().add(zero_point).clamp(-128, 127)
    return (q - zero_point) * scale


def fake_quantize_rows(x: torch.Tensor) -> torch.Tensor:
    """Affine int8 per row of channels (a pixel of NCHW, a row of ``(..., C)``), as dynamic
    activations are quantized at run time."""
    dim = 1 if x.dim() == 4 else -1
    low = x.amin(dim, keepdim=True).clamp(max=0)
    high = x.amax(dim, keepdim=True).clamp(min=0)
    scale = ((high - low) / 255).clamp(min=torch.finfo(torch.float32).eps)
    zero_point = torch.round(-128 - low / scale)
    q = (x / scale).round().add(zero_point).clamp(-128, 127)
    return (q - zero_point) * scale


def quantizable_layers(
    model: nn.Module, layers: tuple[str, ...] = ()
) -> list[tuple[str, nn.Module]]:
    """Conv2d/Linear modules, only those whose path ends with one of ``layers`` if given."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and in_layers(name, layers)
    ]


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    inputs: torch.Tensor,
    layers: tuple[str, ...] = (),
    progress: bool = True,
    *,
    grids: dict[str, Grid] | None = None,
    dynamic: bool = False,
):
    """Rank ``model``'s Conv2d/Linear layers by logits SQNR when each alone is quantized.

    Args:
        model: float model (any input contract); not modified.
        inputs: a batch of calibration inputs in the model's contract.
        layers: only rank modules whose path ends with one of these (a recipe's ``layers``).
        progress: show a progress bar.
        grids: module path -> weight grid of the layers to rank (``quantize.gptq.layer_grids``);
            None: the int8 grid for every layer ``layers`` matches.
        dynamic: quantize each layer's input per row (dynamic activations), not per tensor.

    Returns:
        ``LayerSensitivity`` per layer, most sensitive (lowest SQNR) first.
    """
    model = model.eval()
    reference = model(inputs)
    candidates = quantizable_layers(model, layers)
    if grids is not None:
        candidates = [(name, layer) for name, layer in candidates if name in grids]
    ranges = _input_ranges(model, candidates, inputs)
    results = []
    for name, layer in bar(
        candidates, enabled=progress, desc="sensitivity", unit="layer", leave=False
    ):
        original = layer.weight.data.clone()
        layer.weight.data = fake_quantize_weight(original, (grids or {}).get(name, INT8))
        low, high = ranges[name]
        hook = layer.register_forward_pre_hook(
            (lambda _m, args: (fake_quantize_rows(args[0]),))
            if dynamic
            else (lambda _m, args, lo=low, hi=high: (fake_quantize_activation(args[0], lo, hi),))
        )
        try:
            results.append(
                LayerSensitivity(name, type(layer).__name__, sqnr_db(reference, model(inputs)))
            )
        finally:
            hook.remove()
            layer.weight.data = original
    return sorted(results, key=lambda r: r.sqnr_db)


def _input_ranges(model, layers, inputs) -> dict[str, tuple[float, float]]:
    ranges = {}

    def recorder(name):
        def record(_module, args):
            ranges[name] = (float(args[0].min()), float(args[0].max()))

        return record

    run_with_input_hooks(model, {layer: recorder(name) for name, layer in layers}, [inputs])
    return ranges


@dataclass(frozen=True)
class KeptChoice:
    """What :func:`fewest_kept` chose.

    Attributes:
        layers: the layers kept in higher precision, most sensitive first.
        snr_db: the logits SNR with them kept (as ``snr_of`` measures it).
        reached: whether ``snr_db`` reaches the target.
        tried: ``(number kept, SNR dB)`` of every count evaluated, in the order tried.
    """

    layers: tuple[str, ...]
    snr_db: float
    reached: bool
    tried: tuple[tuple[int, float], ...]


def fewest_kept(
    ranking: Sequence[LayerSensitivity],
    snr_of: Callable[[tuple[str, ...]], float],
    target_db: float,
) -> KeptChoice:
    """The fewest of the most sensitive layers whose keeping gives ``snr_of >= target_db``.

    ``snr_of(kept)`` quantizes with ``kept`` in higher precision and measures; keeping more of
    the ranking is taken to raise it, so counts are tried 0, 1, 2, 4, ... until the target is
    reached (or every ranked layer is kept), then bisected between the last two.

    Returns:
        The choice; ``reached`` is False when keeping every ranked layer falls short.
    """
    names = tuple(layer.name for layer in ranking)
    measured: dict[int, float] = {}

    def snr(count: int) -> float:
        if count not in measured:
            measured[count] = snr_of(names[:count])
        return measured[count]

    low, high = -1, 0  # low: the largest count known short of the target
    while snr(high) < target_db:
        if high == len(names):
            return KeptChoice(names, snr(high), False, tuple(measured.items()))
        low, high = high, min(len(names), max(1, 2 * high))
    while high - low > 1:
        middle = (low + high) // 2
        if snr(middle) >= target_db:
            high = middle
        else:
            low = middle
    return KeptChoice(names[:high], snr(high), True, tuple(measured.items()))


def logits_snr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """:func:`sqnr_db` as a finite number for manifests (identical logits: 999 dB)."""
    value = sqnr_db(reference, approximation)
    return 999.0 if math.isinf(value) else value
