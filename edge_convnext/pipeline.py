"""The whole flow, top-down: checkpoint -> rewrites -> (quantize) -> target artifact.

models.load()            transformers model + preprocessing, labels, licence
rewrites.apply()         the target's module swaps that lower well (Target.rewrites_for; logits
                         unchanged)
quantize                 what Target.calibration(recipe) asks for: a PT2E graph from
                         quantize.ptq (GRAPH) or quantize.qat, with the target's own quantizer,
                         or the calibration images themselves (IMAGES: export() quantizes its
                         own converted model)
Target.export()          artifact + sidecar manifest, written atomically
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import contracts, models, rewrites, targets
from .contracts import InputContract
from .errors import UsageError
from .manifest import QuantizationRecord
from .quantize import recipes
from .quantize.recipes import Recipe
from .targets import Quantization, Target

SENSITIVITY_IMAGES = 8  # enough to rank layers; each layer costs one pass over them
# --target-snr scores its search on every SEARCH_EVERY-th calibration image, held back from the
# quantizer: GPTQ fits the images it rounds on, so their SNR overstates a photo's (w4a8 V1: 32.1
# dB on its 32 calibration photos, 28.0 dB on 168 others).
SEARCH_EVERY = 4
DEFAULT_CALIBRATION_SIZE = 32  # a recipe that needs none, ranked for --keep-float/--target-snr


@dataclass(frozen=True)
class Calibration:
    """Calibration images (``--calib DIR --calib-size N``) and what to learn from them.

    ``keep_float``: keep the N layers most sensitive to quantization in higher precision (the
    recipe's ``fallback_weights``: float, or int8 for 4-bit recipes; ranked by
    ``quantize.sensitivity``). ``target_snr``: instead, keep the fewest that give this logits
    SNR (dB) against the float model on the calibration images held back from the quantizer
    (:func:`held_back`). The layers, the ranking and the search go into the manifest.
    """

    folder: Path | None = None
    size: int | None = None  # default: the recipe's calibration_size
    seed: int = 0
    keep_float: int = 0
    target_snr: float | None = None


def build(
    model_ref: str,
    target: str,
    recipe_name: str,
    out_dir: Path,
    *,
    contract: str | InputContract = contracts.DEFAULT,
    random: bool = False,
    seed: int = 0,
    calibration: Calibration = Calibration(),
    from_qat: Path | None = None,
    rewrite_names: tuple[str, ...] | None = None,
    progress: bool = True,
) -> Path:
    """Export ``model_ref`` to ``target`` with ``recipe_name``; return the artifact path.

    ``rewrite_names`` replaces ``Target.rewrites_for(recipe)``, e.g. to see what the delegate
    makes of the graph without them. Unsupported ``target x recipe`` (or a recipe missing its
    calibration images or QAT checkpoint) is refused before anything is loaded.
    """
    recipe = recipes.get(recipe_name)
    targets.check_supported(target, recipe.name)
    runtime = targets.get(target)
    contract = contracts.get(contract)
    _check_inputs(recipe, calibration, from_qat, runtime.calibration(recipe))
    if rewrite_names is None:
        rewrite_names = runtime.rewrites_for(recipe)
    rewrites.check(rewrite_names)
    loaded = prepare_model(model_ref, rewrite_names, random=random, seed=seed)
    quantization = quantize(loaded, runtime, recipe, contract, calibration, from_qat, progress)
    return runtime.export(loaded, recipe, Path(out_dir), contract, quantization, progress=progress)


def quantize(
    loaded: models.LoadedModel,
    target: Target,
    recipe: Recipe,
    contract: InputContract,
    calibration: Calibration,
    from_qat: Path | None = None,
    progress: bool = True,
    shared: dict | None = None,
) -> Quantization:
    """What ``target.export`` needs for ``recipe``: nothing, a quantized graph, or images.

    ``shared``: a dict kept across calls (``edge-convnext build``) in which decoded calibration
    images and the target-independent steps of :func:`calibrate` are computed once.
    """
    need = target.calibration(recipe)
    if need == targets.IMAGES:
        return Quantization(images=calibration_images(loaded, recipe, calibration, shared))
    if need == targets.GRAPH:
        return Quantization(
            graph=calibrate(loaded, recipe, target, contract, calibration, progress, shared)
        )
    if recipe.is_qat:
        from .quantize import qat

        return Quantization(
            graph=qat.finalize_checkpoint(from_qat, loaded, target, recipe, contract)
        )
    return Quantization()


def prepare_model(
    model_ref: str,
    rewrite_names: tuple[str, ...] = targets.PORTABLE_REWRITES,
    *,
    random: bool = False,
    seed: int = 0,
) -> models.LoadedModel:
    """Load a checkpoint and apply the rewrites (``Target.rewrites_for(recipe)``)."""
    loaded = models.load(model_ref, random=random, seed=seed)
    loaded.module = rewrites.apply(loaded.module, tuple(rewrite_names))
    loaded.rewrites = tuple(rewrite_names)
    return loaded


def calibration_images(loaded, recipe: Recipe, calibration: Calibration, shared=None):
    """The calibration crops (``--calib DIR``, ``--calib-size`` or the recipe's size), decoded
    once per ``shared`` dict."""
    from .quantize import calibration as images

    size = calibration.size or recipe.calibration_size or DEFAULT_CALIBRATION_SIZE
    key = ("images", calibration.folder, size, calibration.seed, loaded.preprocessing)
    if shared is not None and key in shared:
        return shared[key]
    decoded = images.load(calibration.folder, size, loaded.preprocessing, seed=calibration.seed)
    if shared is not None:
        shared[key] = decoded
    return decoded


def calibrate(
    loaded: models.LoadedModel,
    recipe: Recipe,
    target: Target,
    contract: InputContract,
    calibration: Calibration,
    progress: bool = True,
    shared: dict | None = None,
):
    """PTQ with the target's quantizer on calibration images; their keys go to the manifest.

    In order: SmoothQuant balancing (``recipe.smoothquant_alpha``), the sensitivity ranking
    (``--keep-float``/``--target-snr``), weight rounding on the recipe's grids
    (``recipe.weight_rounding``; kept layers on the fallback grid), then quantization of
    ``recipe.layers`` (calibrated static activations, or dynamic ones). ``--target-snr``
    quantizes with more of the ranking kept until the SNR on the held-back calibration images
    reaches the target (``quantize.sensitivity.fewest_kept``). With ``shared``, the steps before
    the target's quantizer (they depend on the model, contract, recipe and images only) run once
    for every target that shares them (ExecuTorch and LiteRT).
    """
    from .quantize import balance, gptq
    from .quantize.ptq import contract_batches, ptq
    from .targets.lowering import example_input, with_contract

    # Core ML quantizes the bare float-NCHW model and adds the contract's input around it.
    contract = target.quantized_contract(contract)
    images = None  # a dynamic-activation recipe with nearest rounding learns nothing from images
    batches = []
    if recipe.needs_calibration or calibration.keep_float or calibration.target_snr is not None:
        images = calibration_images(loaded, recipe, calibration, shared)
        batches = contract_batches(images.crops, contract, loaded.preprocessing)
    search_batches = batches
    if calibration.target_snr is not None:
        batches, search_batches = held_back(batches)
    key = ("prepared", id(loaded), loaded.rewrites, contract.name, recipe, calibration)
    if shared is not None and key in shared:
        module, ranking, rounding = shared[key]
    else:
        module = balance.for_recipe(with_contract(loaded, contract), recipe, batches)
        ranking = []
        if calibration.keep_float or calibration.target_snr is not None:
            ranking = _sensitivity(module, recipe, batches, progress)
        rounding = gptq.Rounding(module, recipe, batches)
        if shared is not None:
            shared[key] = (module, ranking, rounding)
    example = example_input(contract, loaded.preprocessing)

    def quantized_with(kept: tuple[str, ...]):
        scheme = target.quantization_scheme(recipe, keep_float=kept)
        return ptq(rounding.apply(kept, progress), example, scheme, batches, progress=progress)

    search = None
    if calibration.target_snr is None:
        kept = tuple(layer.name for layer in ranking[: calibration.keep_float])
        quantized = quantized_with(kept)
    else:
        quantized, search = _fewest_kept(
            module, ranking, quantized_with, search_batches, calibration
        )
        kept = tuple(search["kept_layers"])
    quantized.record = QuantizationRecord(
        "ptq",
        images.record() if images else None,
        smoothquant_alpha=recipe.smoothquant_alpha,
        weight_rounding=recipe.weight_rounding,
        kept_layers=kept,
        kept_weights=recipe.fallback_weights,
        sensitivity=tuple(layer.to_dict() for layer in ranking),
        target_snr=search,
        facts=quantized.record.facts,
    )
    return quantized


def held_back(batches: list) -> tuple[list, list]:
    """``(fit, search)``: every :data:`SEARCH_EVERY`-th batch scores ``--target-snr``'s search,
    the others calibrate; the picked images are stratified by class, so both halves spread over
    the classes."""
    if len(batches) < SEARCH_EVERY:
        raise UsageError(
            f"--target-snr holds one calibration image in {SEARCH_EVERY} back to score its "
            f"search: pass at least {SEARCH_EVERY} images (--calib-size)"
        )
    search = batches[SEARCH_EVERY - 1 :: SEARCH_EVERY]
    fit = [batch for index, batch in enumerate(batches) if (index + 1) % SEARCH_EVERY]
    return fit, search


def _sensitivity(module, recipe: Recipe, batches, progress: bool) -> list:
    """The recipe's layers ranked by how much each alone, quantized as the recipe quantizes it,
    hurts the logits (layers already at its fallback precision are not ranked)."""
    from .quantize import gptq
    from .quantize.sensitivity import layer_sensitivity

    grids = {
        name: grid
        for name, grid in gptq.layer_grids(module, recipe).items()
        if grid.name == recipe.weights
    }
    return layer_sensitivity(
        module,
        torch.cat(batches[:SENSITIVITY_IMAGES]),
        layers=recipe.layers,
        progress=progress,
        grids=grids,
        dynamic=recipe.dynamic_activations,
    )


def _fewest_kept(module, ranking, quantized_with, batches, calibration: Calibration):
    """``--target-snr``: the quantized graph with the fewest layers kept that reaches the
    target on ``batches`` (held back from the quantizer), and the search's record for the
    manifest."""
    from .quantize.sensitivity import fewest_kept, logits_snr_db

    with torch.no_grad():
        reference = torch.cat([module(batch) for batch in batches])
    passing: dict[tuple[str, ...], object] = {}  # the fewest-kept graph reaching the target

    def snr_of(kept: tuple[str, ...]) -> float:
        quantized = quantized_with(kept)
        with torch.no_grad():
            logits = torch.cat([quantized.graph(batch) for batch in batches])
        snr = logits_snr_db(reference, logits)
        if snr >= calibration.target_snr and all(len(kept) < len(k) for k in passing):
            passing.clear()
            passing[kept] = quantized
        return snr

    choice = fewest_kept(ranking, snr_of, calibration.target_snr)
    if not choice.reached:
        raise UsageError(
            f"--target-snr {calibration.target_snr:g}: keeping all {len(choice.layers)} ranked "
            f"layers in higher precision gives {choice.snr_db:.1f} dB on the held-back "
            "calibration images; ask for less, or use a recipe of higher precision"
        )
    search = {
        "target_db": calibration.target_snr,
        "calibration_snr_db": round(choice.snr_db, 2),  # on the held-back images
        "search_images": len(batches),
        "kept_layers": list(choice.layers),
        "tried": [{"kept": count, "snr_db": round(snr, 2)} for count, snr in choice.tried],
    }
    return passing[choice.layers], search


def _check_inputs(
    recipe: Recipe, calibration: Calibration, from_qat: Path | None, need: str | None
) -> None:
    if need == targets.IMAGES and (calibration.keep_float or calibration.target_snr is not None):
        raise UsageError(
            f"recipe {recipe.name!r} is quantized by the converter's own pass: --keep-float and "
            "--target-snr do not apply to it"
        )
    if calibration.keep_float and calibration.target_snr is not None:
        raise UsageError("--keep-float N and --target-snr DB both choose the kept layers: pick one")
    if calibration.target_snr is not None and need != targets.GRAPH:
        raise UsageError(
            f"--target-snr goes with a calibrated quantized recipe, not {recipe.name!r}"
        )
    if (calibration.keep_float or calibration.target_snr is not None) and not calibration.folder:
        raise UsageError(
            "--keep-float and --target-snr rank layers on calibration images: pass --calib DIR"
        )
    if recipe.needs_calibration and calibration.folder is None:
        raise UsageError(
            f"recipe {recipe.name!r} is calibrated: pass --calib DIR (a folder of images, e.g. "
            "ImageNet train or validation images not used for scoring)"
        )
    if recipe.is_qat and from_qat is None:
        raise UsageError(
            f"recipe {recipe.name!r} needs a QAT checkpoint: run `edge-convnext qat` first, then "
            "pass --from-qat CKPT"
        )
    if not recipe.is_qat and from_qat is not None:
        raise UsageError(f"--from-qat goes with a QAT recipe, not {recipe.name!r}")
