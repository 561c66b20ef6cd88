"""Batch-1 CPU speed of every runtime for one seed model, in one process, with top-1 agreement.

Builds each variant (eager fp32 PyTorch; fp32/int8/4-bit ExecuTorch .pte with XNNPACK;
fp32/int8/4-bit/int16-activation LiteRT .tflite; the peers: ONNX Runtime fp32 and static int8
QDQ, OpenVINO fp32 run at f32 and at bf16 precision and OpenVINO int8 from NNCF PTQ, default
and model_type=TRANSFORMER, on the same calibration images), times batch-1 inference with
``--threads`` threads (warm-up, then interleaved rounds; median and p90), scores top-1 agreement
and cosine vs eager fp32 on real images not used for calibration, and writes JSON + Markdown to
``bench/results/``.

The ``.pte`` and ``.tflite`` files are what ``edge-convnext export`` writes (``pipeline.build``,
``float-nchw`` contract, recipes ``fp32``, ``w8a8``, ``w4a8``, ``w8a16`` calibrated on the first
``--calib`` images) run by the toolkit's own runners. With ``--workdir DIR`` they are kept there
and reused by the next run, so ``--build-only`` can build them under a shared lock and a second
run time them under an exclusive one. ``--rewrites portable`` exports them without the
XNNPACK rewrites (``Target.rewrites_for``), to measure what those buy (``bench/FINDINGS.md``).
Eager PyTorch and ONNX Runtime run the model with the portable rewrites only.

    python bench/speed.py --seed-model convnext-tiny-224 --threads 2 --calib 32 --rounds 20
    python bench/speed.py --variants pte-fp32,pte-w4a8 --workdir runs/bench --build-only
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

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Context:
    """What every build function gets."""

    seed_model: str
    rewrites: str  # "target" (Target.rewrites_for) | "portable" (targets.PORTABLE_REWRITES)
    threads: int
    reference: object  # torch module, portable rewrites (what eager PyTorch runs)
    checkpoint: Path  # save_pretrained directory of the same weights, for pipeline.build
    calibration_dir: Path  # the calibration images (the first --calib), ImageFolder layout
    calibration: np.ndarray  # the same images, float32 (N, 3, H, W), for ONNX Runtime
    workdir: Path

    def rewrite_names(self, target: str, recipe: str) -> tuple[str, ...]:
        from edge_convnext import targets
        from edge_convnext.quantize import recipes

        if self.rewrites == "target":
            return targets.get(target).rewrites_for(recipes.get(recipe))
        return targets.PORTABLE_REWRITES


@dataclass
class Variant:
    """A built variant: how to run it, and facts for the report."""

    run: Runner
    details: dict = field(default_factory=dict)


# --- variants ------------------------------------------------------------------------------


def build_eager(ctx: Context) -> Variant:
    import torch

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return ctx.reference(torch.from_numpy(batch)).numpy()

    return Variant(run, {"runtime": f"torch {torch.__version__}"})


def _artifact(ctx: Context, target: str, recipe: str) -> Variant:
    """``pipeline.build`` (what ``edge-convnext export`` writes), run by the target's runner; an
    artifact already in the work directory (``--workdir``) is reused."""
    from edge_convnext import manifest, pipeline, targets

    folder = ctx.workdir / f"{target}-{recipe}-{ctx.rewrites}"
    sidecars = sorted(folder.glob(f"*.{recipe}.float-nchw.*.json")) if folder.is_dir() else []
    path = sidecars[0].with_suffix("") if sidecars else None
    if path is None:
        path = pipeline.build(
            str(ctx.checkpoint),
            target,
            recipe,
            folder,
            contract="float-nchw",
            calibration=pipeline.Calibration(ctx.calibration_dir, len(ctx.calibration)),
            rewrite_names=ctx.rewrite_names(target, recipe),
            progress=False,
        )
    runner = targets.get(target).load(path, threads=ctx.threads)
    details = manifest.read(path).details
    facts = {
        "artifact": path.name,
        "bytes": manifest.size_of(path),
        "rewrites": details["rewrites"],
        **_structure_facts(target, details),
    }
    return Variant(runner.run_contract_input, facts)


def _structure_facts(target: str, details: dict) -> dict:
    if target == "executorch":
        delegation = details["delegation"]
        return {
            "runtime": f"executorch {_version('executorch')} XNNPACK",
            "delegate_partitions": delegation["delegated_subgraphs"],
            "non_delegated_ops": delegation["not_delegated_ops"],
        }
    return {
        "runtime": f"ai-edge-litert {_version('ai-edge-litert')} "
        f"(litert-torch {_version('litert-torch')})",
        "xnnpack_partitions": details["delegation"].get("delegate_kernels"),
        "not_delegated_ops": details["delegation"].get("cpu_fallback"),
        "ops": details["ops"],
    }


def build_pte_fp32(ctx: Context) -> Variant:
    return _artifact(ctx, "executorch", "fp32")


def build_pte_int8(ctx: Context) -> Variant:
    return _artifact(ctx, "executorch", "w8a8")


def build_pte_w4a8(ctx: Context) -> Variant:
    return _artifact(ctx, "executorch", "w4a8")


def build_tflite_fp32(ctx: Context) -> Variant:
    return _artifact(ctx, "tflite", "fp32")


def build_tflite_int8(ctx: Context) -> Variant:
    return _artifact(ctx, "tflite", "w8a8")


def build_tflite_w4a8(ctx: Context) -> Variant:
    return _artifact(ctx, "tflite", "w4a8")


def build_tflite_w8a16(ctx: Context) -> Variant:
    return _artifact(ctx, "tflite", "w8a16")


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


def _openvino(ctx: Context, model, precision: str, what: str) -> Variant:
    """Compile ``model`` (an ``ov.Model``) for the CPU plugin with an explicit precision: the
    plugin runs bf16 by default on CPUs with AMX/AVX512-BF16, so 'fp32' must say f32."""
    import openvino as ov

    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": ctx.threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    path = ctx.workdir / f"openvino-{what}.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    size = path.stat().st_size + path.with_suffix(".bin").stat().st_size

    def run(batch: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: batch})[compiled.output(0)])

    return Variant(
        run,
        {
            "runtime": f"openvino {ov.__version__.split('-')[0]} CPU, inference precision "
            f"{compiled.get_property('INFERENCE_PRECISION_HINT').get_type_name()}",
            "bytes": size,
        },
    )


def _openvino_fp32_model(ctx: Context):
    import openvino as ov

    return ov.convert_model(_onnx_fp32(ctx))


def build_openvino_f32(ctx: Context) -> Variant:
    return _openvino(ctx, _openvino_fp32_model(ctx), "f32", "fp32")


def build_openvino_bf16(ctx: Context) -> Variant:
    return _openvino(ctx, _openvino_fp32_model(ctx), "bf16", "fp32")


def _openvino_int8(ctx: Context, model_type: str | None) -> Variant:
    """NNCF post-training quantization on the same calibration images as every other int8."""
    import nncf

    dataset = nncf.Dataset(list(ctx.calibration), lambda image: image[None])
    options = {"model_type": nncf.ModelType.TRANSFORMER} if model_type else {}
    quantized = nncf.quantize(
        _openvino_fp32_model(ctx), dataset, subset_size=len(ctx.calibration), **options
    )
    name = f"int8-{model_type or 'default'}"
    variant = _openvino(ctx, quantized, "f32", name)
    variant.details["quantization"] = (
        f"nncf {nncf.__version__} quantize, model_type={model_type or 'default'}, "
        f"{len(ctx.calibration)} images"
    )
    return variant


def build_openvino_int8(ctx: Context) -> Variant:
    return _openvino_int8(ctx, None)


def build_openvino_int8_transformer(ctx: Context) -> Variant:
    return _openvino_int8(ctx, "TRANSFORMER")


VARIANTS: dict[str, Callable[[Context], Variant]] = {
    "eager-fp32": build_eager,
    "pte-fp32": build_pte_fp32,
    "pte-int8": build_pte_int8,
    "pte-w4a8": build_pte_w4a8,
    "tflite-fp32": build_tflite_fp32,
    "tflite-int8": build_tflite_int8,
    "tflite-w4a8": build_tflite_w4a8,
    "tflite-w8a16": build_tflite_w8a16,
    "ort-fp32": build_ort_fp32,
    "ort-int8": build_ort_int8,
    "openvino-fp32-f32": build_openvino_f32,
    "openvino-fp32-bf16": build_openvino_bf16,
    "openvino-int8": build_openvino_int8,
    "openvino-int8-transformer": build_openvino_int8_transformer,
}
# Peers: the strongest non-toolkit CPU runtimes, which each int8 artifact is compared with.
PEERS = ("ort-int8", "openvino-int8", "openvino-int8-transformer")
BASELINE = "eager-fp32"
# The fp32 file each artifact's size is compared with (same target, same converter).
FP32_OF = {"pte": "pte-fp32", "tflite": "tflite-fp32"}


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
    """Top-1 agreement (all, and on the upper half by fp32 margin), cosine, SNR and KL."""
    from edge_convnext import metrics

    logits = np.concatenate([variant.run(image[None]) for image in images])
    ranked = np.sort(reference, axis=1)
    margin = ranked[:, -1] - ranked[:, -2]  # fp32 top-1 minus top-2 logit
    confident = margin >= np.median(margin)
    cosine = np.sum(logits * reference, 1) / (
        np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1)
    )
    return {
        "top1_agreement": metrics.agreement_top1(logits, reference),
        # Seeded weights put many images within a hair of a tie; agreement where the fp32
        # margin is in the upper half separates quantization error from coin flips.
        "top1_agreement_upper_half_margin": metrics.agreement_top1(
            logits[confident], reference[confident]
        ),
        # What this error level gives on average, whichever near-ties it happened to flip.
        "top1_agreement_expected": metrics.expected_agreement(logits, reference),
        "fp32_median_margin": float(np.median(margin)),
        "cosine_mean": metrics.cosine_mean(logits, reference),
        "cosine_min": float(cosine.min()),
        "snr_db": metrics.snr_db(logits, reference),
        "kl": metrics.kl_mean(logits, reference),
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
    parser.add_argument(
        "--rewrites",
        choices=("target", "portable"),
        default="target",
        help="target: each target's rewrites (Target.rewrites_for, what export does); portable: "
        "only the portable ones, to measure what the XNNPACK rewrites buy",
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)}",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the checkpoint and artifacts here and reuse those already built "
        "(default: a temporary folder)",
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build the variants into --workdir and stop"
    )
    args = parser.parse_args(argv)
    if args.build_only and args.workdir is None:
        parser.error("--build-only needs --workdir")

    import torch

    from edge_convnext import rewrites, targets
    from edge_convnext.preprocess import find_images
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
    seeded = nontrivial_model(args.seed_model)
    reference = rewrites.apply(seeded.module, targets.PORTABLE_REWRITES).eval()

    load_before = os.getloadavg()
    with _workdir(args.workdir) as workdir:
        workdir = Path(workdir)
        if not (workdir / args.seed_model).is_dir():
            seeded.hf_model.save_pretrained(workdir / args.seed_model)
        ctx = Context(
            args.seed_model,
            args.rewrites,
            args.threads,
            reference,
            workdir / args.seed_model,
            _link_images(
                find_images(args.data)[: args.calib], args.data, workdir / f"calib{args.calib}"
            ),
            calibration,
            workdir,
        )
        variants: dict[str, Variant] = {}
        failed: dict[str, str] = {}
        for name in names:
            started = time.perf_counter()
            print(f"building {name} ...", file=sys.stderr, flush=True)
            try:
                variants[name] = VARIANTS[name](ctx)
            except Exception as error:  # noqa: BLE001 - a variant that cannot be built is a result
                failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                print(f"  {name} failed: {failed[name]}", file=sys.stderr, flush=True)
                continue
            variants[name].details["build_s"] = round(time.perf_counter() - started, 1)
        names = [name for name in names if name in variants]
        if args.build_only:
            print(f"built {', '.join(names)} in {workdir}", file=sys.stderr)
            return 1 if failed else 0
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
        fp32 = variants.get(FP32_OF.get(name.split("-")[0], ""))
        bytes_ = variants[name].details.get("bytes")
        rows.append(
            {
                "variant": name,
                "median_ms": round(median, 2),
                "p90_ms": round(percentile(samples[name], 90), 2),
                "speedup_vs_eager": round(baseline_ms / median, 2),
                "size_vs_fp32_file": round(bytes_ / fp32.details["bytes"], 4)
                if fp32 is not None and bytes_
                else None,
                **{k: round(v, 6) for k, v in scores[name].items()},
                "details": variants[name].details,
            }
        )
    result = {
        "seed_model": args.seed_model,
        "rewrites": args.rewrites,
        "threads": args.threads,
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
        "failed": failed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"speed-{args.seed_model}-{args.rewrites}-t{args.threads}"
    if args.variants != parser.get_default("variants"):
        stem += "-" + "-".join(names[1:])[:80]
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
        f"{result['calibration_images']}); fp32 median top-1 margin "
        f"{result['results'][0]['fp32_median_margin']:.3f} logit.",
        "",
        "| variant | median ms | p90 ms | vs eager fp32 | vs best int8 peer | size MB "
        "| vs fp32 file | top-1 agree | agree, expected | agree, upper-half margin | cosine mean "
        "| cosine min | SNR dB | KL | partitions / ops |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    peers = [r for r in result["results"] if r["variant"] in PEERS]
    best = min(peers, key=lambda r: r["median_ms"]) if peers else None
    for row in result["results"]:
        versus = (
            f"{best['median_ms'] / row['median_ms']:.2f}x ({best['variant']})"
            if best and "int8" in row["variant"]
            else ""
        )
        lines.append(
            f"| {row['variant']} | {row['median_ms']:.1f} | {row['p90_ms']:.1f} | "
            f"{row['speedup_vs_eager']:.2f}x | {versus} | {_megabytes(row['details'])} | "
            f"{_ratio(row.get('size_vs_fp32_file'))} | "
            f"{100 * row['top1_agreement']:.1f}% | "
            f"{100 * row['top1_agreement_expected']:.1f}% | "
            f"{100 * row['top1_agreement_upper_half_margin']:.1f}% | "
            f"{row['cosine_mean']:.6f} | {row['cosine_min']:.6f} | {row['snr_db']:.1f} | "
            f"{row['kl']:.1e} | {_structure(row['details'])} |"
        )
    for name, reason in result.get("failed", {}).items():
        lines.append(f"| {name} | failed: {reason} ||||||||||||||")
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return f"{value:.3f}x" if value else ""


def _workdir(path: Path | None):
    """``path`` (created) as a context manager, or a temporary folder removed afterwards."""
    import contextlib

    if path is None:
        return tempfile.TemporaryDirectory(prefix="edge-convnext-bench-")
    path.mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(str(path))


def _megabytes(details: dict) -> str:
    return f"{details['bytes'] / 1e6:.1f}" if "bytes" in details else ""


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
            f"{details['xnnpack_partitions']} XNNPACK partition(s), {sum(ops.values())} ops, "
            f"QUANTIZE {ops.get('QUANTIZE', 0)}, DEQUANTIZE {ops.get('DEQUANTIZE', 0)}, "
            f"fallback {details['not_delegated_ops'] or 'none'}"
        )
    return ""


def _link_images(paths: list[Path], root: Path, folder: Path) -> Path:
    """``folder`` holding links to ``paths`` in their layout under ``root`` (classes kept)."""
    for path in paths:
        link = folder / Path(path).relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(Path(path).resolve())
    return folder


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
