"""Quantization-aware training by distillation, resumable: prepare -> step -> finalize.

The student is the float model with the target's PT2E quantizer in QAT mode (fake-quant on
weights and activations); the teacher is the same float model. The loss is the KL divergence
between softmax(teacher / T) and softmax(student / T) on **unlabeled** images (labels, when given,
add a cross-entropy term), so no labeled ImageNet train set is needed.

Everything that decides the result is a function of ``(config.seed, step)``: the batch drawn at
step ``s`` and its flips are the same whether the run went straight through or was killed and
resumed from a checkpoint, so a resumed run ends at the same weights.

The student starts as the model PTQ would ship: SmoothQuant-balanced, GPTQ-rounded weights
(:func:`start_point`) and PTQ's calibrated ranges for every activation and weight
(:func:`calibrated_ranges`). Those ranges stay fixed, so the weights train on the grid PTQ chose.

Known trap: PT2E QAT can collapse accuracy (pytorch #111192, #114859, both about BatchNorm folding
and observer state). ConvNeXt has no BatchNorm, no observer moves during training, and every result
is measured against PTQ.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from edge_convnext import atomic
from edge_convnext.errors import ArtifactError, CheckpointError, CheckpointNotFoundError, UsageError
from edge_convnext.manifest import CalibrationSet, QuantizationRecord
from edge_convnext.progress import bar as progress_bar

from . import balance, gptq
from .data_parallel import SINGLE, Group
from .ptq import (
    PT2EScheme,
    QuantizedGraph,
    calibrated,
    contract_batches,
    export_for_quantization,
)
from .recipes import QATConfig

if TYPE_CHECKING:
    from edge_convnext.contracts import InputContract
    from edge_convnext.models import LoadedModel
    from edge_convnext.targets import Target

CHECKPOINT_FORMAT = 2  # 2: ranges fixed at PTQ's from the start (1: moving-average observers)
START_POINT_IMAGES = 64  # training images that balance, GPTQ-round and calibrate the start


class ModelLoader(Protocol):
    """Loads a checkpoint with the named rewrites applied, like ``pipeline.prepare_model``.

    Passed in rather than imported: the pipeline calls this module, so this module must not
    import the pipeline.
    """

    def __call__(
        self, model_ref: str, rewrite_names: tuple[str, ...], *, random: bool, seed: int
    ) -> LoadedModel: ...


class QATRun:
    """One QAT run: ``prepare`` (in ``__init__``) -> ``step`` ... -> ``finalize``.

    Args:
        teacher: float model taking the contract input (never modified).
        example: one contract input, for export.
        scheme: the target's PT2E quantizer (in QAT mode) and conversion options.
        config: hyper-parameters.
        device: "cpu" or "cuda".
        start: the float model the student starts from (:func:`start_point`; default: the
            teacher).
        ranges: PTQ's ranges for the student's fake-quants (:func:`calibrated_ranges`); None
            when a checkpoint's state, which holds them, is loaded next.
        group: the processes training together (data-parallel under torchrun); call
            :meth:`distribute` once every rank holds the same state.
    """

    def __init__(
        self,
        teacher,
        example,
        scheme: PT2EScheme,
        config: QATConfig,
        device="cpu",
        start=None,
        ranges=None,
        group: Group = SINGLE,
    ):
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

        self.config = config
        self.scheme = scheme
        self.device = torch.device(device)
        self.teacher = copy.deepcopy(teacher).eval().to(self.device)
        torch.manual_seed(config.seed)
        graph = export_for_quantization(start or teacher, example, dynamic_batch=True)
        self.student = prepare_qat_pt2e(graph, scheme.quantizer).to(self.device)
        if ranges is not None:
            fix_ranges(self.student, ranges)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.student.parameters() if p.requires_grad],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        self.step_index = 0
        self.losses: list[float] = []
        self.group = group
        self.forward = self.student

    def distribute(self) -> None:
        """Average the gradients over the group from now on (DistributedDataParallel)."""
        self.forward = self.group.wrap(self.student)

    def stop_distributing(self) -> None:
        """Drop the DistributedDataParallel wrapper while the process group is still up: freed
        after the group is destroyed, its reducer can hang the process on exit."""
        self.forward = self.student

    def step(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> float:
        """One optimisation step on a batch (contract layout, this rank's slice); returns the
        loss of the global batch."""
        from torchao.quantization.pt2e import move_exported_model_to_train

        config = self.config
        move_exported_model_to_train(self.student)
        inputs = inputs.to(self.device)
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        student_logits = self.forward(inputs)
        loss = distillation_loss(student_logits, teacher_logits, config.temperature)
        if labels is not None and config.label_weight > 0:
            loss = loss + config.label_weight * F.cross_entropy(
                student_logits, labels.to(self.device)
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_index += 1
        self.losses.append(self.group.mean(loss.detach()))
        return self.losses[-1]

    def finalize(self) -> QuantizedGraph:
        """The converted (quantize/dequantize) graph, on CPU, for the target to lower."""
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        student = copy.deepcopy(self.student).to("cpu")
        move_exported_model_to_eval(student)
        graph = convert_pt2e(student, fold_quantize=self.scheme.fold_quantize)
        return QuantizedGraph(graph, self.scheme, QuantizationRecord("qat"))

    def state(self) -> dict:
        return {
            "step": self.step_index,
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "losses": list(self.losses),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_index = state["step"]
        self.losses = list(state["losses"])
        torch.set_rng_state(state["torch_rng"])


def start_point(teacher, recipe, batches):
    """The float model QAT starts from: PTQ's SmoothQuant balance and GPTQ-rounded weights, so
    training starts from what PTQ would ship."""
    return gptq.for_recipe(balance.for_recipe(teacher, recipe, batches), recipe, batches)


@dataclass(frozen=True)
class Range:
    """One observer's calibrated quantization parameters, as PTQ would convert them."""

    qscheme: torch.qscheme
    quant_min: int
    quant_max: int
    scale: torch.Tensor
    zero_point: torch.Tensor

    def fits(self, fake) -> bool:
        observer = fake.activation_post_process
        return (self.qscheme, self.quant_min, self.quant_max) == (
            observer.qscheme,
            observer.quant_min,
            observer.quant_max,
        )

    def apply(self, fake) -> None:
        """Fix ``fake`` (a fake-quant module) at this range and stop its observer."""
        observer = fake.activation_post_process
        scale = self.scale.to(fake.scale.device)
        zero = self.zero_point.to(fake.zero_point.device)
        if self.qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric):
            high = scale * (self.quant_max - self.quant_min) / 2
            low = -high
        else:
            low = (self.quant_min - zero) * scale
            high = (self.quant_max - zero) * scale
        # The forward pass reads scale/zero_point; convert_pt2e recomputes them from min/max.
        for buffer, value in (
            (fake.scale, scale),
            (fake.zero_point, zero.to(fake.zero_point.dtype)),
            (observer.min_val, low),
            (observer.max_val, high),
        ):
            if buffer.numel() != value.numel():
                buffer.resize_(value.shape)
            buffer.copy_(value.reshape(buffer.shape))  # a state dict loads in that shape
        fake.disable_observer()


def calibrated_ranges(start, example, scheme: PT2EScheme, batches) -> list[Range]:
    """PTQ's ranges for ``start``: every observer of the target's PTQ quantizer (``scheme``,
    histogram observers for activations), calibrated on ``batches``, in graph order."""
    from torchao.quantization.pt2e.observer import ObserverBase

    prepared = calibrated(start, example, scheme, batches, dynamic_batch=True)
    return [
        Range(module.qscheme, module.quant_min, module.quant_max, *module.calculate_qparams())
        for module in prepared.modules()
        if isinstance(module, ObserverBase)
    ]


def fix_ranges(student, ranges: list[Range]) -> None:
    """Start every fake-quant of ``student`` at PTQ's range and keep it there.

    The QAT quantizer places its fake-quants where the PTQ quantizer of the same target placed
    its observers, in the same order; a mismatch is refused rather than paired wrongly.
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    fakes = [module for module in student.modules() if isinstance(module, FakeQuantizeBase)]
    if len(fakes) != len(ranges) or not all(r.fits(f) for r, f in zip(ranges, fakes, strict=False)):
        raise ArtifactError(
            f"the QAT quantizer placed {len(fakes)} fake-quants where PTQ placed "
            f"{len(ranges)} observers; cannot start QAT from PTQ's ranges"
        )
    for fake, calibrated_range in zip(fakes, ranges, strict=True):
        calibrated_range.apply(fake)


def same_structure(teacher, meta: dict):
    """A model a checkpoint's student state dict loads into (resume, finalize)."""
    if meta.get("smoothquant_alpha") is None:
        return teacher
    return balance.with_identity_balance(teacher)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0):
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, mean over the batch."""
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def batch_for_step(pool: np.ndarray, step: int, batch_size: int, seed: int) -> np.ndarray:
    """The batch of step ``step``: a function of ``(seed, step)`` only, so resumes replay it.

    Draws ``batch_size`` crops from ``pool`` (uint8 ``(N, H, W, 3)``) and flips half of them.
    """
    rng = np.random.default_rng([seed, step])
    indices = rng.choice(len(pool), size=batch_size, replace=len(pool) < batch_size)
    batch = pool[indices].copy()
    flips = rng.random(batch_size) < 0.5
    batch[flips] = batch[flips, :, ::-1]
    return batch


def save_checkpoint(path: Path, run: QATRun, meta: dict) -> None:
    """Write the run's state and what it was started with, atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "meta": meta,
        "config": asdict(run.config),
        **run.state(),
    }
    with atomic.atomic_path(Path(path)) as temporary:
        torch.save(payload, temporary)


def load_checkpoint(path: Path) -> dict:
    """Read a QAT checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: missing (CheckpointNotFoundError), unreadable or of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such QAT checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"{path}: not a readable QAT checkpoint ({error})") from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"{path}: not an edge-convnext QAT checkpoint")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: QAT checkpoint format {payload['format']}, this version reads "
            f"{CHECKPOINT_FORMAT}; train again"
        )
    return payload


def train(
    model_ref: str,
    target: str,
    data: Path,
    out: Path,
    config: QATConfig,
    *,
    load_model: ModelLoader,
    contract: str = "app",
    images: int = 512,
    random_init: bool = False,
    model_seed: int = 0,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    group: Group = SINGLE,
) -> QATRun:
    """Run (or resume) QAT for ``target``'s ``w8a8-qat`` recipe; checkpoint to ``out``.

    Killed mid-run, the same call with ``resume=True`` continues from the last checkpoint and
    ends at the same weights as an uninterrupted run. ``load_model`` loads ``model_ref`` with
    the target's rewrites (``pipeline.prepare_model``). Under torchrun (``group`` from
    :func:`data_parallel.session`), each rank trains on its slice of the same global batch of
    ``config.batch_size``; rank 0 reads and writes the checkpoint and decodes and calibrates
    on the images, and broadcasts them, so every rank starts identical.
    """
    from edge_convnext import contracts, targets
    from edge_convnext.targets.lowering import example_input, with_contract

    from . import calibration, recipes
    from .ptq import contract_tensor

    group.check_batch(config.batch_size)
    recipe = recipes.get("w8a8-qat")
    runtime = targets.get(target)
    runtime.check(recipe)
    contract = contracts.get(contract)
    meta = {
        "model": _resolved(model_ref),
        "random_init": random_init,
        "model_seed": model_seed,
        "target": target,
        "recipe": recipe.name,
        "contract": contract.name,
        "data": _resolved(data),
        "images": images,
        "rewrites": list(runtime.rewrites_for(recipe)),
        "smoothquant_alpha": recipe.smoothquant_alpha,
        "weight_rounding": recipe.weight_rounding,
    }
    state = group.share(lambda: _resume_state(Path(out), resume, meta, config))
    loaded = load_model(model_ref, tuple(meta["rewrites"]), random=random_init, seed=model_seed)
    # Decoded once, on rank 0: every rank trains on the very crops the checkpoint records.
    training = group.share(
        lambda: calibration.load(data, images, loaded.preprocessing, seed=config.seed)
    )
    pool = training.crops
    scheme = runtime.quantization_scheme(recipe, qat=True)
    example = example_input(contract, loaded.preprocessing)
    teacher = with_contract(loaded, contract)
    ranges = None
    if state is None and group.is_main:
        batches = contract_batches(pool[:START_POINT_IMAGES], contract, loaded.preprocessing)
        start = start_point(teacher, recipe, batches)
        ptq_scheme = runtime.quantization_scheme(recipe)
        ranges = calibrated_ranges(start, example, ptq_scheme, batches)
    else:
        start = same_structure(teacher, meta)
    run = QATRun(teacher, example, scheme, config, device, start, ranges, group=group)
    if state is None and group.parallel:
        state = group.share(lambda: _on_cpu(run.state()))  # rank 0's calibrated start
    if state is not None:
        run.load_state(state)
    run.distribute()
    meta = {**meta, "training_images": asdict(training.record())}  # audits leave them out
    bar = progress_bar(
        None,
        enabled=progress and group.is_main,
        total=config.steps,
        initial=run.step_index,
        desc="QAT",
        unit="step",
    )
    try:
        while run.step_index < config.steps:
            batch = batch_for_step(pool, run.step_index, config.batch_size, config.seed)
            loss = run.step(contract_tensor(group.shard(batch), contract, loaded.preprocessing))
            bar.update(1)
            bar.set_postfix(kl=f"{loss:.4g}")
            done = run.step_index % config.checkpoint_every == 0 or run.step_index == config.steps
            if done and group.is_main:
                save_checkpoint(Path(out), run, meta)
    finally:
        run.stop_distributing()
        bar.close()
    return run


def finalize_checkpoint(
    path: Path, loaded, target: Target, recipe, contract: InputContract
) -> QuantizedGraph:
    """Rebuild the QAT student from a checkpoint and convert it for ``target``."""
    from edge_convnext.targets.lowering import example_input, with_contract

    payload = load_checkpoint(path)
    meta = payload["meta"]
    for key, value in (("target", target.name), ("contract", contract.name)):
        if meta[key] != value:
            raise UsageError(
                f"{path}: trained for {key} {meta[key]!r}, not {value!r}; pass --{key} "
                f"{meta[key]} or train again"
            )
    if meta.get("rewrites") != list(loaded.rewrites):
        raise CheckpointError(
            f"{path}: trained on the graph after rewrites {meta.get('rewrites')}, this export "
            f"lowers {list(loaded.rewrites)}; train again with this version"
        )
    config = QATConfig.from_dict(payload["config"])
    scheme = target.quantization_scheme(recipe, qat=True)
    example = example_input(contract, loaded.preprocessing)
    teacher = with_contract(loaded, contract)
    run = QATRun(teacher, example, scheme, config, start=same_structure(teacher, meta))
    run.load_state(payload)
    quantized = run.finalize()
    training = meta.get("training_images")
    quantized.record = QuantizationRecord(
        "qat",
        CalibrationSet.from_dict(training) if training else None,
        smoothquant_alpha=meta.get("smoothquant_alpha"),
        weight_rounding=meta.get("weight_rounding", "nearest"),
        facts={
            "steps": run.step_index,
            "checkpoint": path.name,  # a name, never a local path: the file ships in apps
            "config": payload["config"],
            "final_kl": run.losses[-1] if run.losses else None,
        },
    )
    return quantized


def _resume_state(out: Path, resume: bool, meta: dict, config: QATConfig) -> dict | None:
    if not out.exists():
        return None
    if not resume:
        raise UsageError(
            f"{out} exists: pass --resume to continue that run, or choose another --out"
        )
    payload = load_checkpoint(out)
    saved = dict(payload["meta"])
    for key in ("model", "data"):  # checkpoints that recorded the paths as typed
        if isinstance(saved.get(key), str):
            saved[key] = _resolved(saved[key])
    changed = [k for k in meta if saved.get(k) != meta[k]]
    if payload["config"] != asdict(config):
        changed.append("training options")
    if changed:
        raise UsageError(
            f"{out} was started with different {', '.join(changed)}; resume with the same "
            "command, or choose another --out"
        )
    return payload


def _on_cpu(value):
    """``value`` (a state: nested dicts/lists of tensors) with every tensor on the CPU, so it
    unpickles on any rank's device.

    A state dict keeps its ``_metadata``: without the module versions in it, ``load_state_dict``
    takes the observers' state for version 1 and resets their ``eps`` to the default.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        moved = type(value)((key, _on_cpu(item)) for key, item in value.items())
        metadata = getattr(value, "_metadata", None)
        if metadata is not None:
            moved._metadata = metadata
        return moved
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(item) for item in value)
    return value


def _resolved(ref: str | Path) -> str:
    """A path that exists as its absolute, resolved spelling (``data`` and ``./data`` are one
    run); anything else (a Hub id, a seed name) as given."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else str(ref)
