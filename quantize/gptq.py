"""GPTQ weight rounding: weights that minimise each layer's output error, not its weight error.

Rounding every weight to the nearest grid step ignores that the errors of one output channel add
up over correlated inputs. GPTQ (Frantar et al., 2023; the OBQ update of Hassibi & Stork) rounds
the input columns of a layer one at a time and spreads each rounding error over the columns not
yet rounded, weighted by the inverse Hessian ``H = X^T X`` of the layer's calibration inputs.

The result is float weights that already sit on the grid the target's quantizer will use, so the
conversion rounds nothing again. Two grids (:class:`Grid`):

- :data:`INT8`: per output channel, symmetric, ``scale = max|w| / 127`` (PT2E's per-channel
  min-max observer with ``quant_min=-127``, as in XNNPACK's, litert-torch's and our Core ML
  configs; ai-edge-quantizer's channelwise int8). Each channel keeps its largest-magnitude
  weight as it was, so the observer derives the same scale.
- :data:`INT4`: groups of 32 input columns per output channel, levels -7..7, the scale of each
  group picked among ``f * max|w| / 7`` (``f`` in 0.6..1) to minimise the group's squared
  error and rounded to bfloat16, which both XNNPACK (ExecuTorch stores group scales as bf16) and
  ai-edge-quantizer (bf16 rounding, fp16 storage) hold exactly. Each group's largest weight is
  put on ``±7 * scale``, so a quantizer that derives the scale as ``max|w| / 7`` finds it.

Convolutions are handled through their im2col view (``F.unfold``), whose column order is the
weight's ``(in_channel, kh, kw)`` order. Depthwise (grouped) convolutions are skipped: their
columns are single taps with nothing to compensate.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_convnext.progress import bar

from .ptq import in_layers, run_with_input_hooks

QMAX = 127  # symmetric int8 weights, [-127, 127]
OBSERVER_EPS = 2**-12  # the smallest scale the targets' weight observers give
DAMPING = 0.01  # fraction of the mean Hessian diagonal added to it (GPTQ's default)
BLOCK = 128  # columns updated together (lazy batch updates; same result, fewer matmuls)
CLIP_FACTORS = torch.linspace(1.0, 0.6, 21)  # int4 group scales tried, as fractions of max|w|/7


@dataclass(frozen=True)
class Grid:
    """A symmetric integer weight grid: ``levels * scale``, levels in ``[-qmax, qmax]``.

    Attributes:
        name: the weight type it stores (``int8``, ``int4``).
        qmax: the largest level.
        group_size: input columns sharing a scale; None: one scale per output channel.
        bf16_scales: scales are bfloat16 values chosen by :data:`CLIP_FACTORS` (int4); False:
            ``max|w| / qmax`` in float32, as PT2E's observers compute it (int8).
    """

    name: str
    qmax: int
    group_size: int | None = None
    bf16_scales: bool = False

    def scales(self, weight: torch.Tensor) -> torch.Tensor:
        """``(out, groups)`` scales to round a ``(out, in)`` weight with (``groups`` 1 without
        groups)."""
        if not self.bf16_scales:
            return self.derived_scales(weight)
        return torch.cat([self._searched_scales(rows) for rows in weight.float().split(256)])

    def derived_scales(self, weight: torch.Tensor) -> torch.Tensor:
        """``max|w| / qmax`` per group: what a quantizer derives from weights on this grid (and
        their scales, :meth:`pin_peaks` having put each group's peak on ``±qmax * scale``)."""
        peak = self.groups(weight.float()).abs().amax(dim=-1)
        return (peak / self.qmax).clamp(min=OBSERVER_EPS)

    def _searched_scales(self, weight: torch.Tensor) -> torch.Tensor:
        groups = self.groups(weight)
        candidates = _bf16(self.derived_scales(weight)[..., None] * CLIP_FACTORS)
        candidates = candidates.clamp(min=OBSERVER_EPS)
        levels = torch.clamp(
            torch.round(groups[..., None, :] / candidates[..., None]), -self.qmax, self.qmax
        )
        errors = (levels * candidates[..., None] - groups[..., None, :]).pow(2).sum(-1)
        return candidates.gather(-1, errors.argmin(-1, keepdim=True)).squeeze(-1)

    def groups(self, weight: torch.Tensor) -> torch.Tensor:
        """``(out, groups, size)`` view of a ``(out, in)`` weight."""
        size = self.group_size or weight.shape[1]
        if weight.shape[1] % size:
            raise ValueError(
                f"{self.name} weights take groups of {size} input columns; this layer has "
                f"{weight.shape[1]}"
            )
        return weight.reshape(weight.shape[0], -1, size)

    def column_scales(self, scales: torch.Tensor, columns: int) -> torch.Tensor:
        """Per-weight scales ``(out, in)`` from :meth:`scales`."""
        return scales.repeat_interleave(self.group_size or columns, dim=1)

    def column_params(self, weight: torch.Tensor) -> torch.Tensor:
        """What :meth:`round_column` rounds each column of a ``(out, in)`` weight with: its
        per-weight scales."""
        return self.column_scales(self.scales(weight), weight.shape[1])

    def round_column(self, column: torch.Tensor, params: torch.Tensor, index: int) -> torch.Tensor:
        """Column ``index`` of the weight (``(out,)``), rounded on this grid."""
        return self.round(column, params[:, index])

    def round(self, weight: torch.Tensor, column_scales: torch.Tensor) -> torch.Tensor:
        """Nearest grid values of ``weight`` (any shape broadcasting with the scales)."""
        return torch.clamp(torch.round(weight / column_scales), -self.qmax, self.qmax) * (
            column_scales
        )

    def nearest(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` (``(out, ...)``, any rank) rounded to nearest on this grid."""
        flat = weight.reshape(weight.shape[0], -1).float()
        columns = self.column_params(flat)
        return self.pin_peaks(self.round(flat, columns), flat, columns).reshape(weight.shape)

    def pin_peaks(
        self, rounded: torch.Tensor, original: torch.Tensor, column_scales: torch.Tensor
    ) -> torch.Tensor:
        """Each group's largest-magnitude weight where a quantizer deriving the scale from
        ``max|w|`` finds this grid's scale: as it was (int8, ``scale = max|w| / 127``), or on
        ``±qmax * scale`` (bf16 int4 scales)."""
        grouped, source = self.groups(rounded).clone(), self.groups(original)
        scales = self.groups(column_scales)
        peak = source.abs().argmax(dim=-1, keepdim=True)
        value = source.gather(-1, peak)
        if self.bf16_scales:
            value = torch.sign(value) * self.qmax * scales.gather(-1, peak)
        return grouped.scatter(-1, peak, value).reshape(rounded.shape)


@dataclass(frozen=True)
class Palette:
    """A 4-bit (``2**bits`` entries) weight palette per group of ``rows_per_table`` output
    channels, as coremltools' ``per_grouped_channel`` palettization stores it: the tables are
    1-D k-means of each group's weights (as coremltools' own k-means), rounded to fp16, and GPTQ
    then rounds every weight to an entry of its group's table instead of the nearest one."""

    name: str
    bits: int
    rows_per_table: int = 8
    group_size = None  # every input column shares the tables (the Grid attribute layer_grids reads)
    iterations = 25

    def tables(self, weight: torch.Tensor) -> torch.Tensor:
        """``(out / rows_per_table, 2**bits)`` ascending fp16-exact tables of a ``(out, in)``
        weight (Lloyd's k-means from the quantiles, per group)."""
        values = weight.float().reshape(-1, self.rows_per_table * weight.shape[1])
        values = values.sort(dim=1).values
        levels = 2**self.bits
        quantiles = torch.linspace(0, 1, 2 * levels + 1)[1::2]
        centers = torch.quantile(values, quantiles, dim=1).T.contiguous()
        for _ in range(self.iterations):
            index = self._nearest_index(values, centers)
            sums = torch.zeros_like(centers).scatter_add_(1, index, values)
            counts = torch.zeros_like(centers).scatter_add_(1, index, torch.ones_like(values))
            centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
            centers = centers.sort(dim=1).values
        return centers.half().float()

    def found_tables(self, weight: torch.Tensor) -> torch.Tensor:
        """The tables of a ``(out, in)`` weight already on a palette: each group's distinct
        values, ascending, the last repeated up to ``2**bits`` entries (what :meth:`derived
        <Grid.derived_scales>` scales are to a grid)."""
        groups = weight.float().reshape(-1, self.rows_per_table * weight.shape[1])
        tables = []
        for values in groups:
            distinct = values.unique()
            if len(distinct) > 2**self.bits:
                raise ValueError(
                    f"{len(distinct)} distinct values in {self.rows_per_table} rows: not on a "
                    f"{self.name} palette (round the weights first: quantize.gptq.Rounding)"
                )
            padding = distinct[-1:].expand(2**self.bits - len(distinct))
            tables.append(torch.cat([distinct, padding]))
        return torch.stack(tables)

    @staticmethod
    def _nearest_index(values: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        """Index of the nearest entry of ascending ``tables`` (one row per row of ``values``)."""
        midpoints = (tables[:, 1:] + tables[:, :-1]) / 2
        return torch.searchsorted(midpoints.contiguous(), values.contiguous())

    def column_params(self, weight: torch.Tensor) -> torch.Tensor:
        """Each output channel's table, ``(out, 2**bits)``."""
        return self.tables(weight).repeat_interleave(self.rows_per_table, dim=0)

    def round_column(self, column: torch.Tensor, params: torch.Tensor, index: int) -> torch.Tensor:
        return self.round(column[:, None], params)[:, 0]

    def round(self, weight: torch.Tensor, row_tables: torch.Tensor) -> torch.Tensor:
        """The nearest table entry of each weight of ``(out, n)`` (``row_tables``: ``(out,
        2**bits)``)."""
        return row_tables.gather(1, self._nearest_index(weight, row_tables))

    def nearest(self, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.reshape(weight.shape[0], -1).float()
        return self.round(flat, self.column_params(flat)).reshape(weight.shape)

    def pin_peaks(self, rounded: torch.Tensor, original, params) -> torch.Tensor:
        return rounded  # a table entry is found as it is; nothing to pin


INT8 = Grid("int8", QMAX)
# 32: the largest group dividing every input width of ConvNeXt-T (96 = 3 x 32), and +1.6 dB
# SNR over groups of 128 where they fit (bench/FINDINGS.md); XNNPACK takes multiples of 32.
INT4 = Grid("int4", 7, group_size=32, bf16_scales=True)
PALETTE4 = Palette("palette4", 4)
GRIDS = {grid.name: grid for grid in (INT8, INT4, PALETTE4)}


def _bf16(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.bfloat16).float()


def grid_for(weights: str) -> Grid | Palette:
    """The grid a recipe's ``weights`` (or ``fallback_weights``) type is stored on."""
    if weights not in GRIDS:
        raise ValueError(f"no integer weight grid for {weights!r}")
    return GRIDS[weights]


def layer_grids(module: nn.Module, recipe, kept: Sequence[str] = ()) -> dict[str, Grid]:
    """The grid of every dense layer ``recipe`` quantizes in ``module``: its ``weights`` grid,
    or its ``fallback_weights`` grid for its ``fallback_layers``, ``kept`` and layers whose
    input width the ``weights`` grid's groups do not divide (none: float)."""
    grids = {}
    for name, layer in gptq_layers(module, recipe.layers).items():
        fallback = name in kept or bool(
            recipe.fallback_layers and in_layers(name, recipe.fallback_layers)
        )
        grid = grid_for(recipe.weights) if recipe.weights in GRIDS else None
        if grid is not None and grid.group_size and _columns(layer) % grid.group_size:
            fallback = True
        weights = recipe.fallback_weights if fallback else recipe.weights
        if weights != "fp32":
            grids[name] = grid_for(weights)
    return grids


def _columns(layer: nn.Module) -> int:
    return layer.weight[0].numel()


class Rounding:
    """A recipe's weight rounding of one module, each layer rounded once per grid it is asked
    for: ``apply(kept)`` for several ``kept`` sets (``--target-snr``) costs one float pass.

    GPTQ (``recipe.weight_rounding == "gptq"``) or nearest; int8 recipes with nearest rounding
    leave the weights to the target's observer, as before.
    """

    def __init__(self, module: nn.Module, recipe, batches: Sequence[torch.Tensor]):
        self.module, self.recipe = module.eval(), recipe
        self.batches = batches
        self._hessians: dict[str, torch.Tensor] | None = None
        self._rounded: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return self.recipe.weight_rounding == "gptq" or self.recipe.weights == "int4"

    @torch.no_grad()
    def apply(self, kept: Sequence[str] = (), progress: bool = False) -> nn.Module:
        """A copy of the module with the rounded weights of every layer ``recipe`` quantizes,
        ``kept`` ones on the fallback grid (or float)."""
        if not self.active:
            return self.module
        module = copy.deepcopy(self.module)
        layers = gptq_layers(module, self.recipe.layers)
        grids = layer_grids(module, self.recipe, kept)
        for name, grid in bar(
            grids.items(), enabled=progress, desc="weight rounding", unit="layer", leave=False
        ):
            layer = layers[name]
            layer.weight.copy_(self._round(name, layer.weight, grid).reshape(layer.weight.shape))
        return module

    def _round(self, name: str, weight: torch.Tensor, grid: Grid) -> torch.Tensor:
        key = (name, grid.name)
        if key not in self._rounded:
            flat = weight.reshape(weight.shape[0], -1)
            if self.recipe.weight_rounding == "gptq":
                self._rounded[key] = gptq_round(flat, self._hessian(name), grid)
            else:
                self._rounded[key] = grid.nearest(flat)
        return self._rounded[key]

    def _hessian(self, name: str) -> torch.Tensor:
        if self._hessians is None:
            self._hessians = input_hessians(
                self.module, gptq_layers(self.module, self.recipe.layers), self.batches
            )
        return self._hessians[name]


def for_recipe(
    module: nn.Module,
    recipe,
    batches: Sequence[torch.Tensor],
    exclude: Sequence[str] = (),
    progress: bool = False,
) -> nn.Module:
    """``module`` with the weights ``recipe`` rounds put on its grids (else itself).

    ``exclude``: layers kept out of ``recipe.weights`` (sensitivity): on the fallback grid, or
    left float when the recipe's fallback is ``fp32``.
    """
    return Rounding(module, recipe, batches).apply(exclude, progress)


def gptq_layers(module: nn.Module, layers: Sequence[str], exclude: Sequence[str] = ()) -> dict:
    """The dense convolutions and linears whose path ends with one of ``layers``."""
    return {
        name: child
        for name, child in module.named_modules()
        if isinstance(child, (nn.Conv2d, nn.Linear))
        and getattr(child, "groups", 1) == 1
        and in_layers(name, layers)
        and name not in exclude
    }


@torch.no_grad()
def round_weights(
    module: nn.Module,
    batches: Sequence[torch.Tensor],
    layers: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: bool = False,
) -> nn.Module:
    """A copy of ``module`` whose ``layers`` (minus ``exclude``) hold GPTQ-rounded int8 weights.

    The Hessians come from one float forward pass over ``batches`` (the calibration images).
    """
    module = copy.deepcopy(module).eval()
    targets = gptq_layers(module, layers, exclude)
    hessians = input_hessians(module, targets, batches)
    for name, layer in bar(
        targets.items(), enabled=progress, desc="GPTQ rounding", unit="layer", leave=False
    ):
        weight = layer.weight.reshape(layer.weight.shape[0], -1)
        layer.weight.copy_(gptq_round(weight, hessians[name]).reshape(layer.weight.shape))
    return module


def input_hessians(
    module: nn.Module, targets: dict[str, nn.Module], batches: Sequence[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``X^T X / rows`` of each target layer's input (im2col columns for convolutions)."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def recorder(name: str, layer: nn.Module):
        def record(_layer, inputs):
            columns = input_columns(layer, inputs[0]).double()
            sums[name] = sums.get(name, 0) + columns.T @ columns
            rows[name] = rows.get(name, 0) + columns.shape[0]

        return record

    hooks = {layer: recorder(name, layer) for name, layer in targets.items()}
    run_with_input_hooks(module, hooks, batches)
    return {name: (sums[name] / rows[name]).float() for name in targets if name in sums}


def input_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer multiplies by its weight matrix: ``(positions, in_features)``."""
    if isinstance(layer, nn.Conv2d):
        x = F.unfold(
            x,
            layer.kernel_size,
            dilation=layer.dilation,
            padding=layer.padding,
            stride=layer.stride,
        )
        return x.transpose(1, 2).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


def gptq_round(
    weight: torch.Tensor, hessian: torch.Tensor, grid: Grid | Palette = INT8
) -> torch.Tensor:
    """GPTQ of a ``(out, in)`` weight on ``grid`` (scales from the weight as it is: "static
    groups"); returns grid values."""
    original = weight.float()
    params = grid.column_params(original)  # per-weight scales, or each row's palette
    weight = original.clone()
    hessian = hessian.clone()
    dead = torch.diag(hessian) == 0  # inputs never seen: weight irrelevant, round it to 0
    hessian[dead, dead] = 1
    weight[:, dead] = 0
    hessian += DAMPING * torch.mean(torch.diag(hessian)) * torch.eye(len(hessian))
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)))
    inverse = inverse.T  # upper Cholesky factor of H^-1, as in the reference implementation
    rounded = torch.zeros_like(weight)
    for start in range(0, weight.shape[1], BLOCK):
        end = min(start + BLOCK, weight.shape[1])
        block = weight[:, start:end].clone()
        errors = torch.zeros_like(block)
        block_inverse = inverse[start:end, start:end]
        for i in range(end - start):
            column = block[:, i]
            rounded[:, start + i] = grid.round_column(column, params, start + i)
            errors[:, i] = (column - rounded[:, start + i]) / block_inverse[i, i]
            block[:, i:] -= errors[:, i : i + 1] @ block_inverse[i : i + 1, i:]
        weight[:, end:] -= errors @ inverse[start:end, end:]
    return grid.pin_peaks(rounded, original, params)


def channel_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per-row scale of the symmetric int8 grid, as PT2E's per-channel observer computes it."""
    return INT8.scales(weight).squeeze(1)


def to_grid(column: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return INT8.round(column, scale)


def fake_quantize_weight(weight: torch.Tensor, grid: Grid = INT8) -> torch.Tensor:
    """``weight`` (``(out, ...)``, any rank) rounded to nearest on ``grid`` (default: the int8
    grid the targets ship, per output channel, :func:`channel_scale`)."""
    return grid.nearest(weight)


def keep_channel_maxima(rounded: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Put back each row's largest-magnitude weight (exactly ``±127 * scale``), so the observer
    finds the scale GPTQ rounded to."""
    return INT8.pin_peaks(rounded, original, torch.ones_like(original))
