"""Post-training quantization driver (PT2E): export -> prepare -> calibrate -> convert.

The target supplies the quantizer (``Target.quantization_scheme(recipe)``: XNNPACK's for
ExecuTorch, litert-torch's for TFLite, torchao's X86 one for Core ML); this module supplies the
calibration loop and the pieces every quantizer's config shares (:func:`int8_config`), like
ExecuTorch's split of a quantization recipe from a lowering recipe. Recipes with dynamic
activations (``w4a8``) take no PT2E quantizer: their scheme is a
:class:`~edge_convnext.quantize.dynamic.DynamicScheme`, built by ``quantize.dynamic``.
``inplace=False``: the float model is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from edge_convnext import contracts
from edge_convnext.contracts import InputContract
from edge_convnext.errors import UnsupportedError, choices
from edge_convnext.manifest import QuantizationRecord
from edge_convnext.preprocess import Preprocessing
from edge_convnext.progress import bar

from .recipes import Recipe


@dataclass(frozen=True)
class PT2EScheme:
    """What a target hands the driver: its PT2E quantizer and how to convert for its lowering.

    ``fold_quantize``: fold weight quantize ops into int8 constants (ExecuTorch/XNNPACK wants
    this; litert-torch's converter wants the quantize ops kept).
    """

    quantizer: object
    fold_quantize: bool = True


@dataclass
class QuantizedGraph:
    """A quantized model taking the artifact's contract input, ready for the target: a
    converted PT2E graph, or a module with torchao dynamic-activation weights."""

    graph: torch.nn.Module
    scheme: object  # PT2EScheme or quantize.dynamic.DynamicScheme
    record: QuantizationRecord  # what the manifest says about how it was quantized


def outside_modules(module_names) -> Callable[[torch.fx.Node], bool]:
    """A PT2E node filter: False for nodes traced from ``module_names`` (or their children)."""
    names = tuple(module_names)

    def keep(node: torch.fx.Node) -> bool:
        stack = node.meta.get("nn_module_stack") or {}
        paths = [str(path).removeprefix("L['self'].") for path, _ in stack.values()]
        return not any(p == n or p.startswith(n + ".") for p in paths for n in names)

    return keep


def layer_filter(
    layers: Sequence[str] = (), keep_float: Sequence[str] = ()
) -> Callable[[torch.fx.Node], bool]:
    """A PT2E node filter: which nodes the quantizer may annotate.

    ``layers``: module path suffixes to quantize (a recipe's ``layers``; empty: all);
    ``keep_float``: module paths to leave in float, children included (sensitivity ranking).
    Weights and biases carry no module stack and always pass; the quantizers check every node of
    a pattern, so a conv is quantized only if its own node passes.
    """
    outside_kept = outside_modules(keep_float)

    def allow(node: torch.fx.Node) -> bool:
        if node.op != "call_function":
            return True
        return outside_kept(node) and in_layers(_innermost_module_path(node), layers)

    return allow


def in_layers(module_path: str, layers: Sequence[str]) -> bool:
    """Whether ``module_path`` ends with one of ``layers`` (whole path parts; empty: any)."""
    return not layers or ("." + module_path).endswith(tuple("." + layer for layer in layers))


def _innermost_module_path(node: torch.fx.Node) -> str:
    """Path of the module ``node`` was traced from ("" for top-level code)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _ = list(stack.values())[-1]
    return str(path).removeprefix("L['self'].")


def run_with_input_hooks(
    module: torch.nn.Module,
    hooks: dict[torch.nn.Module, Callable],
    batches: Sequence[torch.Tensor],
) -> None:
    """Run ``module`` on ``batches`` with ``hook(layer, inputs)`` seeing each layer's inputs."""
    handles = [layer.register_forward_pre_hook(hook) for layer, hook in hooks.items()]
    try:
        for batch in batches:
            module(batch)
    finally:
        for handle in handles:
            handle.remove()


def contract_tensor(
    crops: np.ndarray, contract: InputContract | str, preprocessing: Preprocessing
) -> torch.Tensor:
    """``uint8 (N, H, W, 3)`` RGB crops as one tensor in ``contract``'s layout and dtype."""
    return torch.from_numpy(contracts.get(contract).inputs(crops, preprocessing))


def contract_batches(
    crops: np.ndarray, contract: InputContract | str, preprocessing: Preprocessing
) -> list[torch.Tensor]:
    """Batch-1 tensors in ``contract``'s layout (artifacts are calibrated as they run)."""
    return list(contract_tensor(crops, contract, preprocessing).split(1))


def export_for_quantization(
    module: torch.nn.Module, example: torch.Tensor, dynamic_batch: bool = False
) -> torch.fx.GraphModule:
    """The ATen graph PT2E quantizers annotate (``torch.export`` then ``.module()``).

    ``dynamic_batch`` keeps the batch dimension symbolic (QAT trains on batches; artifacts are
    exported at batch 1).
    """
    module = copy.deepcopy(module).eval()
    if not dynamic_batch:
        return torch.export.export(module, (example,)).module()
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = example.expand(2, *example.shape[1:]).contiguous()
    return torch.export.export(module, (example,), dynamic_shapes=({0: batch},)).module()


def ptq(
    module: torch.nn.Module,
    example: torch.Tensor,
    scheme,
    calibration: Sequence[torch.Tensor],
    progress: bool = True,
) -> QuantizedGraph:
    """Calibrated static quantization of ``module`` with the scheme's PT2E quantizer, or the
    dynamic-activation layers of a ``DynamicScheme`` (nothing to calibrate).

    Args:
        module: float model taking the artifact's contract input.
        example: one input (shape/dtype of the contract) for export.
        scheme: the target's :class:`PT2EScheme` (quantizer and conversion options), or a
            ``quantize.dynamic.DynamicScheme``.
        calibration: input batches to observe activation ranges on.
        progress: show a progress bar.

    Returns:
        The quantized graph, ready for the target to lower.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if not isinstance(scheme, PT2EScheme):  # quantize.dynamic.DynamicScheme
        return scheme.quantize(module)
    prepared = calibrated(module, example, scheme, calibration, progress=progress)
    graph = convert_pt2e(prepared, fold_quantize=scheme.fold_quantize)
    return QuantizedGraph(graph, scheme, QuantizationRecord("ptq"))


def calibrated(
    module: torch.nn.Module,
    example: torch.Tensor,
    scheme: PT2EScheme,
    calibration: Sequence[torch.Tensor],
    *,
    dynamic_batch: bool = False,
    progress: bool = False,
) -> torch.fx.GraphModule:
    """The prepared PT2E graph of ``module`` with its observers run on ``calibration``."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    if not calibration:
        raise ValueError("static quantization needs at least one calibration image")
    graph = export_for_quantization(module, example, dynamic_batch=dynamic_batch)
    prepared = prepare_pt2e(graph, scheme.quantizer)
    with torch.no_grad():
        for batch in bar(
            calibration, enabled=progress, desc="calibrating", unit="img", leave=False
        ):
            prepared(batch)
    return prepared


def observer_class(name: str):
    """The torchao observer class a recipe's ``observer`` names (static activation ranges)."""
    from torchao.quantization.pt2e import observer

    classes = {"histogram": observer.HistogramObserver, "minmax": observer.MinMaxObserver}
    if name not in classes:
        raise UnsupportedError(f"PT2E quantizers take observer {choices(classes)}, not {name!r}")
    return classes[name]


def int8_config(config, recipe: Recipe, target: str, *, qat: bool = False):
    """A target quantizer's int8 ``QuantizationConfig`` made to follow ``recipe``.

    Every field the recipe sets for PT2E quantization is read here, so a recipe means the same
    thing on every target: ``weights`` and ``activations`` must be int8 (the only precision
    these quantizers' kernels take; anything else is refused, never silently built as int8);
    ``observer`` sets the static activation observer (the targets' own configs default to the
    histogram observer). QAT configs (fake-quant activations) keep their observer: QAT fixes
    its ranges from PTQ's (``quantize.qat.fix_ranges``).
    """
    for field_name in ("weights", "activations"):
        if getattr(recipe, field_name) != "int8":
            raise UnsupportedError(
                f"recipe {recipe.name!r}: target {target!r} quantizes int8 {field_name} only, "
                f"not {getattr(recipe, field_name)!r}"
            )
    if recipe.dynamic_activations or recipe.fallback_weights != "fp32":
        raise UnsupportedError(
            f"recipe {recipe.name!r}: target {target!r}'s PT2E quantizer builds static int8 "
            "activations with float fallback layers only"
        )
    activation = config.input_activation
    if qat or activation is None:
        return config
    observer = observer_class(recipe.observer)
    eps = activation.observer_or_fake_quant_ctr.p.keywords.get("eps", 2**-12)
    activation = replace(activation, observer_or_fake_quant_ctr=observer.with_args(eps=eps))
    output = config.output_activation
    if output is not None:
        output = replace(output, observer_or_fake_quant_ctr=observer.with_args(eps=eps))
    return replace(config, input_activation=activation, output_activation=output)
