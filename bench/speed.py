"""Batch-1 CPU speed of every runtime for one seed model, in one process, with top-1 agreement.

Builds each variant (eager fp32 PyTorch; fp32/int8 ExecuTorch .pte with XNNPACK; fp32/int8
LiteRT .tflite; ONNX Runtime fp32 and static int8 QDQ as the peer), times batch-1 inference with
``--threads`` threads (warm-up, then interleaved rounds; median and p90), scores top-1 agreement
and cosine vs eager fp32 on real images not used for calibration, and writes JSON + Markdown to
``bench/results/``.

``--rewrites delegate`` (default) lowers the model after the delegate rewrites of
:mod:`edge_convnext.rewrites` and quantizes only the pointwise convs (see ``bench/FINDINGS.md``);
``--rewrites default`` reproduces the earlier probe (default rewrites, whole-graph quantizers).
Eager PyTorch and ONNX Runtime always run the model with the default rewrites only.

The export code is deliberately small: ``VARIANTS`` maps a name to a build function, so the
toolkit's own target modules can replace them later.

    python bench/speed.py --seed-model convnext-tiny-224 --threads 2 --calib 32 --rounds 20
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "imagenet-sample" / "val"
RESULTS = REPO / "bench" / "results"

# The delegate rewrites, applied after the default ones (order does not matter).
DELEGATE_REWRITES = (
    "head-layernorm-eps",
    "grn-sum-squares",
    "split-depthwise-conv",
    "pointwise-conv-blocks",
    "channels-first-layernorm",
    "pooled-head",
)
# Module paths (suffixes) of the layers the int8 recipes quantize after the delegate rewrites.
INT8_LAYERS = (".pwconv1", ".pwconv2")

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Context:
    """What every build function gets."""

    seed_model: str
    rewrites: str  # "delegate" | "default"
    threads: int
    reference: object  # torch module, default rewrites (what eager PyTorch runs)
    lowered: object  # torch module to export (delegate or default rewrites)
    calibration: np.ndarray  # float32 (N, 3, H, W)
    workdir: Path
    grn_alpha: float | None = 0.5  # GRN output balancing before int8 (None: off)
    _int8_source: object = None

    def int8_source(self):
        """The module the int8 variants calibrate: ``lowered``, GRN outputs balanced (V2)."""
        if self._int8_source is None:
            self._int8_source = self.lowered
            if self.rewrites == "delegate" and self.grn_alpha is not None:
                self._int8_source = balance_grn(self.lowered, self.calibration, self.grn_alpha)
        return self._int8_source


@dataclass
class Variant:
    """A built variant: how to run it, and facts for the report."""

    run: Runner
    details: dict = field(default_factory=dict)


# --- quantization --------------------------------------------------------------------------


def _int8_layer_filter(node) -> bool:
    """PT2E annotation filter: only convs/linears inside the modules named in INT8_LAYERS.

    Weight and bias (get_attr) nodes carry no module stack, so everything that is not a call
    passes; the annotators call the filter on every node of a pattern.
    """
    if node.op != "call_function":
        return True
    stack = node.meta.get("nn_module_stack")
    return bool(stack) and list(stack.values())[-1][0].endswith(INT8_LAYERS)


def balance_grn(module, calibration: np.ndarray, alpha: float):
    """SmoothQuant-style balancing of V2's GRN outputs (the input of ``pwconv2``), on a copy.

    Per input channel c of pwconv2: ``t_c = act_c^alpha / w_c^(1-alpha)`` normalised to mean
    1, with ``act_c`` the calibration abs-max of the GRN output and ``w_c`` the abs-max of
    pwconv2's weight column; the GRN output is divided by t, the weights multiplied
    (:meth:`PointwiseConvBlock.balance_grn_output`), exact up to fp32 rounding. No-op for V1.
    """
    import copy

    import torch

    from edge_convnext.rewrites import PointwiseConvBlock

    module = copy.deepcopy(module)
    blocks = [
        b for b in module.modules() if isinstance(b, PointwiseConvBlock) and b.grn is not None
    ]
    if not blocks:
        return module
    absmax: dict = {}

    def record(block):
        def hook(_module, inputs):
            seen = inputs[0].abs().amax(dim=(0, 2, 3))
            absmax[block] = torch.maximum(absmax.get(block, seen), seen)

        return hook

    handles = [b.pwconv2.register_forward_pre_hook(record(b)) for b in blocks]
    with torch.no_grad():
        for image in calibration:
            module(torch.from_numpy(image[None]))
    for handle in handles:
        handle.remove()
    for block in blocks:
        weight = block.pwconv2.weight.detach().abs().amax(dim=(0, 2, 3))
        scale = absmax[block].pow(alpha) / weight.pow(1 - alpha)
        block.balance_grn_output((scale / scale.mean()).clamp(min=1e-2))
    return module


def _calibrate(module, calibration: np.ndarray, quantizer, fold_quantize: bool):
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = torch.from_numpy(calibration[:1])
    prepared = prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
    with torch.no_grad():
        for image in calibration:
            prepared(torch.from_numpy(image[None]))
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


def xnnpack_int8_quantizer(rewrites: str):
    """ExecuTorch recipe: static int8, per-channel symmetric weights, per-tensor activations."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    quantizer = XNNPACKQuantizer().set_global(config)
    if rewrites == "delegate":
        quantizer.set_filter_function(_int8_layer_filter)
    return quantizer


def litert_int8_quantizer(rewrites: str):
    """LiteRT recipe: litert-torch's PT2EQuantizer, same scheme, same layer filter."""
    from litert_torch.quantize import pt2e_quantizer as litert_pt2e

    class PointwiseOnlyQuantizer(litert_pt2e.PT2EQuantizer):
        """Annotates the global static config only where ``_int8_layer_filter`` holds."""

        def _annotate_for_static_quantization_config(self, model):
            return self._annotate_all_static_patterns(model, self.global_config, _int8_layer_filter)

    cls = PointwiseOnlyQuantizer if rewrites == "delegate" else litert_pt2e.PT2EQuantizer
    config = litert_pt2e.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    return cls().set_global(config)


# --- variants ------------------------------------------------------------------------------


def build_eager(ctx: Context) -> Variant:
    import torch

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return ctx.reference(torch.from_numpy(batch)).numpy()

    return Variant(run, {"runtime": f"torch {torch.__version__}"})


def _pte(ctx: Context, module, name: str) -> Variant:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings import portable_lib

    example = torch.from_numpy(ctx.calibration[:1])
    edge = to_edge_transform_and_lower(
        torch.export.export(module, (example,)), partitioner=[XnnpackPartitioner()]
    )
    info = get_delegation_info(edge.exported_program().graph_module)
    path = ctx.workdir / f"{name}.pte"
    path.write_bytes(edge.to_executorch().buffer)
    portable_lib._unsafe_reset_threadpool(ctx.threads)
    program = portable_lib._load_for_executorch(str(path))

    def run(batch: np.ndarray) -> np.ndarray:
        return program.forward((torch.from_numpy(batch),))[0].numpy()

    fallback = {
        k: v.non_delegated for k, v in info.delegation_by_operator.items() if v.non_delegated
    }
    details = {
        "runtime": f"executorch {_version('executorch')} XNNPACK",
        "bytes": path.stat().st_size,
        "delegate_partitions": info.num_delegated_subgraphs,
        "delegated_nodes": info.num_delegated_nodes,
        "non_delegated_nodes": info.num_non_delegated_nodes,
        "non_delegated_ops": fallback,
    }
    return Variant(run, details)


def build_pte_fp32(ctx: Context) -> Variant:
    return _pte(ctx, ctx.lowered, "pte-fp32")


def build_pte_int8(ctx: Context) -> Variant:
    quantizer = xnnpack_int8_quantizer(ctx.rewrites)
    quantized = _calibrate(ctx.int8_source(), ctx.calibration, quantizer, True)
    return _pte(ctx, quantized, "pte-int8")


def _tflite(ctx: Context, module, name: str, quant_config=None) -> Variant:
    import litert_torch
    import torch
    from ai_edge_litert.interpreter import Interpreter

    example = torch.from_numpy(ctx.calibration[:1])
    path = ctx.workdir / f"{name}.tflite"
    path.write_bytes(
        litert_torch.convert(module, (example,), quant_config=quant_config).model_content()
    )
    interpreter = Interpreter(model_path=str(path), num_threads=ctx.threads)
    interpreter.allocate_tensors()
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run(batch: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source["index"], _to_tensor_type(batch, source))
        interpreter.invoke()
        return _from_tensor_type(interpreter.get_tensor(sink["index"]), sink)

    details = {
        "runtime": f"ai-edge-litert {_version('ai-edge-litert')} "
        f"(litert-torch {_version('litert-torch')})",
        "bytes": path.stat().st_size,
        "input_dtype": np.dtype(source["dtype"]).name,
        "ops": tflite_op_counts(path.read_bytes()),
    }
    return Variant(run, details)


def _to_tensor_type(batch: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return batch
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(batch / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def _from_tensor_type(tensor: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return tensor.copy()
    scale, zero_point = detail["quantization"]
    return (tensor.astype(np.float32) - zero_point) * scale


def tflite_op_counts(flatbuffer: bytes) -> dict[str, int]:
    """Builtin operator counts of the main subgraph of a .tflite flatbuffer."""
    from collections import Counter

    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        codes.append(names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
    graph = model.Subgraphs(0)
    return dict(
        Counter(codes[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength()))
    )


def build_tflite_fp32(ctx: Context) -> Variant:
    return _tflite(ctx, ctx.lowered, "tflite-fp32")


def build_tflite_int8(ctx: Context) -> Variant:
    from litert_torch.quantize.quant_config import QuantConfig

    quantizer = litert_int8_quantizer(ctx.rewrites)
    quantized = _calibrate(ctx.int8_source(), ctx.calibration, quantizer, fold_quantize=False)
    return _tflite(ctx, quantized, "tflite-int8", QuantConfig(pt2e_quantizer=quantizer))


def _onnx_fp32(ctx: Context) -> Path:
    import torch

    path = ctx.workdir / "model.onnx"
    if not path.exists():
        example = torch.from_numpy(ctx.calibration[:1])
        torch.onnx.export(
            ctx.reference,
            (example,),
            str(path),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamo=True,
            external_data=False,
        )
    return path


def _ort(ctx: Context, path: Path) -> Variant:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = ctx.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: batch})[0]

    return Variant(
        run, {"runtime": f"onnxruntime {ort.__version__} CPU EP", "bytes": path.stat().st_size}
    )


def build_ort_fp32(ctx: Context) -> Variant:
    return _ort(ctx, _onnx_fp32(ctx))


def build_ort_int8(ctx: Context) -> Variant:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, images: np.ndarray):
            self.images = iter(images)

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {"pixel_values": image[None]}

    fp32 = _onnx_fp32(ctx)
    prepared = ctx.workdir / "model-prep.onnx"
    quant_pre_process(str(fp32), str(prepared))
    int8 = ctx.workdir / "model-int8.onnx"
    quantize_static(
        str(prepared),
        str(int8),
        Reader(ctx.calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    variant = _ort(ctx, int8)
    variant.details["quantization"] = (
        "quantize_static QDQ, per-channel QInt8 weights, QInt8 activations, MinMax"
    )
    return variant


VARIANTS: dict[str, Callable[[Context], Variant]] = {
    "eager-fp32": build_eager,
    "pte-fp32": build_pte_fp32,
    "pte-int8": build_pte_int8,
    "tflite-fp32": build_tflite_fp32,
    "tflite-int8": build_tflite_int8,
    "ort-fp32": build_ort_fp32,
    "ort-int8": build_ort_int8,
}
BASELINE = "eager-fp32"


# --- measurement ---------------------------------------------------------------------------


def load_images(data: Path, limit: int | None = None) -> np.ndarray:
    """Images under ``data`` (sorted) as float32 NCHW normalized with the seeds' recipe."""
    from edge_convnext.preprocess import Preprocessing, find_images, load_crop, normalize

    recipe = Preprocessing()
    paths = find_images(data)[:limit]
    if not paths:
        raise SystemExit(f"{data}: no images found")
    return normalize(np.stack([load_crop(p, recipe) for p in paths]), recipe)


def time_variants(
    variants: dict[str, Variant], image: np.ndarray, warmup: int, rounds: int, per_round: int
) -> dict[str, list[float]]:
    """Interleaved rounds: each round runs every variant (rotating order) ``per_round`` times
    after one untimed call, so load changes hit all variants alike."""
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name].run(image)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            run = variants[name].run
            run(image)
            for _ in range(per_round):
                start = time.perf_counter()
                run(image)
                samples[name].append((time.perf_counter() - start) * 1000)
    return samples


def agreement(variant: Variant, images: np.ndarray, reference: np.ndarray) -> dict:
    """Top-1 agreement, mean cosine and max abs logit difference vs the reference logits."""
    logits = np.concatenate([variant.run(image[None]) for image in images])
    cosine = np.sum(logits * reference, 1) / (
        np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1)
    )
    return {
        "top1_agreement": float(np.mean(logits.argmax(1) == reference.argmax(1))),
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "max_abs_diff": float(np.abs(logits - reference).max()),
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-model", default="convnext-tiny-224")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib", type=int, default=32, help="calibration images (first N)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--eval", type=int, default=0, help="held-out images to score (0: all)")
    parser.add_argument("--rewrites", choices=("delegate", "default"), default="delegate")
    parser.add_argument(
        "--grn-alpha",
        type=float,
        default=0.5,
        help="V2: balance GRN outputs before int8 with this SmoothQuant alpha",
    )
    parser.add_argument("--no-grn-balance", action="store_true")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)}",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    from edge_convnext import rewrites
    from edge_convnext.testing import nontrivial_model

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if BASELINE not in names:
        names.insert(0, BASELINE)

    images = load_images(args.data)
    calibration, held_out = images[: args.calib], images[args.calib :]
    if args.eval:
        held_out = held_out[: args.eval]
    original = nontrivial_model(args.seed_model).module
    reference = rewrites.apply(original).eval()
    lowered_names = DELEGATE_REWRITES if args.rewrites == "delegate" else rewrites.DEFAULT
    lowered = rewrites.apply(original, lowered_names).eval()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="edge-convnext-bench-") as workdir:
        ctx = Context(
            args.seed_model,
            args.rewrites,
            args.threads,
            reference,
            lowered,
            calibration,
            Path(workdir),
            grn_alpha=None if args.no_grn_balance else args.grn_alpha,
        )
        variants: dict[str, Variant] = {}
        for name in names:
            started = time.perf_counter()
            print(f"building {name} ...", file=sys.stderr, flush=True)
            variants[name] = VARIANTS[name](ctx)
            variants[name].details["build_s"] = round(time.perf_counter() - started, 1)
        load_start = os.getloadavg()
        samples = time_variants(variants, held_out[:1], args.warmup, args.rounds, args.per_round)
        load_end = os.getloadavg()
        with torch.inference_mode():
            reference_logits = np.concatenate(
                [reference(torch.from_numpy(image[None])).numpy() for image in held_out]
            )
        scores = {
            name: agreement(variant, held_out, reference_logits)
            for name, variant in variants.items()
        }

    baseline_ms = statistics.median(samples[BASELINE])
    rows = []
    for name in names:
        median = statistics.median(samples[name])
        rows.append(
            {
                "variant": name,
                "median_ms": round(median, 2),
                "p90_ms": round(percentile(samples[name], 90), 2),
                "speedup_vs_eager": round(baseline_ms / median, 2),
                **{k: round(v, 6) for k, v in scores[name].items()},
                "details": variants[name].details,
            }
        )
    result = {
        "seed_model": args.seed_model,
        "rewrites": args.rewrites,
        "lowered_rewrites": list(lowered_names),
        "threads": args.threads,
        "grn_balance_alpha": None if args.no_grn_balance else args.grn_alpha,
        "calibration_images": len(calibration),
        "held_out_images": len(held_out),
        "rounds": args.rounds,
        "per_round": args.per_round,
        "load_avg_before_build": load_before,
        "load_avg_timing_start": load_start,
        "load_avg_timing_end": load_end,
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"speed-{args.seed_model}-{args.rewrites}-t{args.threads}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    table = markdown_table(result)
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    return 0


def markdown_table(result: dict) -> str:
    """The results as a Markdown table with a one-line header of the conditions."""
    lines = [
        f"## {result['seed_model']} -- rewrites: {result['rewrites']}, "
        f"{result['threads']} threads, batch 1",
        "",
        f"{result['cpu']}; load average at timing start/end: "
        f"{result['load_avg_timing_start'][0]:.2f} / {result['load_avg_timing_end'][0]:.2f}; "
        f"{result['rounds']} rounds x {result['per_round']}; agreement on "
        f"{result['held_out_images']} held-out images (calibration: first "
        f"{result['calibration_images']}).",
        "",
        "| variant | median ms | p90 ms | vs eager fp32 | top-1 agree | cosine mean | cosine min |"
        " partitions / ops |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["results"]:
        lines.append(
            f"| {row['variant']} | {row['median_ms']:.1f} | {row['p90_ms']:.1f} | "
            f"{row['speedup_vs_eager']:.2f}x | {100 * row['top1_agreement']:.1f}% | "
            f"{row['cosine_mean']:.6f} | {row['cosine_min']:.6f} | {_structure(row['details'])} |"
        )
    return "\n".join(lines) + "\n"


def _structure(details: dict) -> str:
    if "delegate_partitions" in details:
        fallback = details["non_delegated_ops"]
        fallback = {k: v for k, v in fallback.items() if k != "getitem"}
        return (
            f"{details['delegate_partitions']} XNNPACK partition(s), fallback {fallback or 'none'}"
        )
    if "ops" in details:
        ops = details["ops"]
        return (
            f"{sum(ops.values())} ops, QUANTIZE {ops.get('QUANTIZE', 0)}, "
            f"DEQUANTIZE {ops.get('DEQUANTIZE', 0)}, input {details['input_dtype']}"
        )
    return ""


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
