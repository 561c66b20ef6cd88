"""Audit a trained classifier made elsewhere on real photos, in every layout: EfficientNet-Lite0.

The ground truth for ``audit`` of artifacts without a sidecar (issue 15, items 5-6). The real
ImageNet-trained EfficientNet-Lite0 (``tests/support/efficientnet_lite0.py``) is converted with
no sidecar to an fp32 ``.tflite`` (NHWC), an fp32 ``.pte`` (NCHW), an fp32 ``.onnx`` (NCHW), a
TensorFlow-Hub-shaped ``.onnx`` (uint8 NHWC input, 1001 logits) and a w8a8 PTQ ``.tflite``. Then:

1. eager PyTorch scores every photo under ``--data`` (an ImageFolder; 178/200 expected on the
   shared sample with the model's recipe: shorter side 256 bilinear, crop 224, (x - 127) / 128);
2. the photos are laid out under ``--work`` in every layout ``audit`` reads (imagefolder, devkit
   flat + ground truth + meta.mat, Kaggle LOC csv, path,label csv, Hugging Face parquet: the
   builders of ``tests/test_data.py``), renamed ``ILSVRC2012_val_<n>.JPEG`` in sorted order;
3. ``edge-convnext audit`` of the four float files, with the preprocessing flags, in each layout:
   top-1 and, image by image, whether each file is right where PyTorch is;
4. the w8a8 ``.tflite`` is calibrated on the first ``--calib`` photos (sorted order, the
   convention of ``bench/speed.py``) and audited against the fp32 ``.tflite`` on the rest, the
   calibration photos passed to ``--exclude``: top-1 of both, the drop and McNemar's p. A second
   w8a8 file, made with the project's TFLite quantizer as it is (no conv + ReLU6 fusion, float
   adds), is audited beside it for comparison.

    flock -s /tmp/cpu.lock python bench/efficientnet_audit.py \\
        --data /work/shared/imagenet-sample/val --work /tmp/lite0-audit

Accuracies, not timings: a shared lock is enough. Prints a Markdown report; ``--json`` writes the
numbers. Converted files are reused from ``--work``, keyed by ``--calib`` and by the source that
makes them (the support module, the project's TFLite quantizer and PTQ driver).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the support module and the layout builders

from support import efficientnet_lite0 as lite0  # noqa: E402
from test_data import BUILDERS, Photo  # noqa: E402

from edge_convnext import atomic, cli, metrics  # noqa: E402
from edge_convnext.data import LAYOUTS, load_dataset  # noqa: E402

FLOAT_FILES = (lite0.FP32_TFLITE, lite0.FP32_PTE, lite0.FP32_ONNX, lite0.UINT8_1001_ONNX)
QUANTIZER_SOURCES = (REPO / "targets" / "tflite.py", REPO / "quantize" / "ptq.py")
# The comparison file: the project's TFLite quantizer without the support module's annotations.
W8A8_PROJECT = "efficientnet-lite0.w8a8-project-quantizer.tflite"
QUANTIZED = {
    lite0.W8A8_TFLITE: "conv + ReLU6 fused, int8 adds (support module)",
    W8A8_PROJECT: "project quantizer as is",
}


def photos_of(data: Path) -> tuple[list[Photo], list[Path]]:
    """The ImageFolder under ``data`` as numbered :class:`Photo` samples (sorted by path) and
    their files, in the same order."""
    samples = sorted(load_dataset(data, layout="imagefolder").samples, key=lambda s: str(s.path))
    photos = [Photo(n, s.label, s.path.read_bytes()) for n, s in enumerate(samples, start=1)]
    return photos, [s.path for s in samples]


def run_audit(files: list[Path], data: Path, out: Path, *options: str) -> tuple[dict, dict]:
    """``edge-convnext audit`` -> ``(report.json, {name: {key: (label, logits)}})``."""
    argv = ["audit", *map(str, files), "--data", str(data), "--out", str(out), "--no-progress"]
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the Markdown report
        status = cli.main([*argv, *lite0.FLAGS, *options])
    if status != 0:
        raise SystemExit(f"audit of {data} exited {status}")
    report = json.loads((out / "report.json").read_text())
    with np.load(out / "predictions.npz", allow_pickle=False) as npz:
        keys, labels = [str(k) for k in npz["keys"]], npz["labels"]
        predictions = {
            str(name): {
                key: (int(label), npz[f"logits_{i}"][row])
                for row, (key, label) in enumerate(zip(keys, labels, strict=True))
            }
            for i, name in enumerate(npz["names"])
        }
    return report, predictions


def float_rows(files, layouts, work, photos, pytorch) -> list[dict]:
    """One row per (float file, layout): top-1 and per-image agreement with PyTorch."""
    expected = pytorch_right(pytorch, photos)
    rows = []
    for layout, root in layouts.items():
        report, predictions = run_audit(files, root, work / f"audit-{layout}")
        for path in files:
            scored = predictions[str(path)]
            labels = {key: label for key, (label, _) in scored.items()}
            same_labels = labels == {p.name: p.label for p in photos}
            right = {
                key: bool(np.argmax(logits) == label) for key, (label, logits) in scored.items()
            }
            gap = max(float(np.abs(lg - pytorch[key]).max()) for key, (_, lg) in scored.items())
            top1 = next(r for r in report["artifacts"] if r["artifact"] == str(path))["top1"]
            rows.append(
                {
                    "file": path.name,
                    "layout": layout,
                    "n": len(scored),
                    "correct": sum(right.values()),
                    "top1": top1["value"],
                    "labels_equal": same_labels,
                    "same_as_pytorch": sum(right[key] == expected[key] for key in right),
                    "max_logit_gap": gap,
                }
            )
    return rows


def pytorch_right(pytorch: dict[str, np.ndarray], photos: list[Photo]) -> dict[str, bool]:
    return {p.name: bool(np.argmax(pytorch[p.name]) == p.label) for p in photos}


def w8a8_rows(artifacts, layouts, work, calibration_keys) -> list[dict]:
    """fp32 vs each w8a8 ``.tflite`` on the imagefolder layout, calibration photos excluded."""
    fp32 = artifacts[lite0.FP32_TFLITE]
    quantized_files = [artifacts[name] for name in QUANTIZED]
    report, predictions = run_audit(
        [fp32, *quantized_files],
        layouts["imagefolder"],
        work / "audit-w8a8",
        "--exclude",
        *calibration_keys,
    )
    keys = sorted(predictions[str(fp32)])
    if set(keys) & set(calibration_keys):
        raise SystemExit("the audit scored calibration photos")
    labels = np.array([predictions[str(fp32)][k][0] for k in keys])
    right = {
        str(path): np.argmax(np.stack([predictions[str(path)][k][1] for k in keys]), 1) == labels
        for path in (fp32, *quantized_files)
    }
    by_name = {r["artifact"]: r for r in report["artifacts"]}
    reference = by_name[str(fp32)]
    return [
        w8a8_row(reference, by_name[str(path)], right[str(fp32)], right[str(path)])
        | {"file": path.name, "quantizer": QUANTIZED[path.name]}
        | {"calibration_images": len(calibration_keys)}
        for path in quantized_files
    ]


def w8a8_row(reference: dict, quantized: dict, right_fp32, right_w8a8) -> dict:
    """One quantized file's numbers against the fp32 one (report rows, per-image rightness)."""
    return {
        "n": quantized["n"],
        "fp32_correct": int(right_fp32.sum()),
        "w8a8_correct": int(right_w8a8.sum()),
        "fp32_top1": reference["top1"]["value"],
        "w8a8_top1": quantized["top1"]["value"],
        "w8a8_top1_ci95": quantized["top1"]["ci95"],
        "drop_points": 100 * (reference["top1"]["value"] - quantized["top1"]["value"]),
        "fp32_only_right": int((right_fp32 & ~right_w8a8).sum()),
        "w8a8_only_right": int((~right_fp32 & right_w8a8).sum()),
        "mcnemar_p": quantized["mcnemar_p"],
        "mcnemar_p_recomputed": metrics.mcnemar_exact_p(right_fp32, right_w8a8),
        "agreement_top1": quantized["agreement_top1"],
        "cosine_mean": quantized["cosine_mean"],
        "snr_db": quantized["snr_db"],
        "fp32_mb": reference["size_mb"],
        "w8a8_mb": quantized["size_mb"],
    }


def markdown(result: dict) -> str:
    n = result["images"]
    lines = [
        f"EfficientNet-Lite0 (ImageNet-trained), {n} photos of `{result['data']}`",
        "",
        f"- eager PyTorch: **{result['pytorch_correct']}/{n}** top-1",
        "",
        "| file (no sidecar) | layout | top-1 | labels as PyTorch's | right/wrong as PyTorch "
        "| max abs logit gap |",
        "|---|---|---:|---|---:|---:|",
    ]
    for row in result["float"]:
        lines.append(
            f"| `{row['file']}` | {row['layout']} | {row['correct']}/{row['n']} | "
            f"{'yes' if row['labels_equal'] else 'NO'} | {row['same_as_pytorch']}/{row['n']} | "
            f"{row['max_logit_gap']:.1e} |"
        )
    q = result["w8a8"][0]
    lines += [
        "",
        f"w8a8 PTQ `.tflite` files, calibrated on the first {q['calibration_images']} photos "
        f"(sorted paths), audited against the fp32 `.tflite` on the other {q['n']} "
        f"(`--exclude`; eager PyTorch: {result['pytorch_correct_held_out']}/{q['n']} on them):",
        "",
        "| w8a8 quantizer | fp32 top-1 | w8a8 top-1 [95% CI] | drop "
        "| fp32-only right / w8a8-only right | McNemar p | agree | cosine | SNR dB "
        "| MB fp32 -> w8a8 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for q in result["w8a8"]:
        lines.append(
            f"| {q['quantizer']} | {q['fp32_correct']}/{q['n']} ({100 * q['fp32_top1']:.1f}%) "
            f"| {q['w8a8_correct']}/{q['n']} ({100 * q['w8a8_top1']:.1f}%) "
            f"[{100 * q['w8a8_top1_ci95'][0]:.1f}, {100 * q['w8a8_top1_ci95'][1]:.1f}] "
            f"| {q['drop_points']:+.1f} pts | {q['fp32_only_right']} / {q['w8a8_only_right']} "
            f"| {q['mcnemar_p']:.3g} | {100 * q['agreement_top1']:.1f}% "
            f"| {q['cosine_mean']:.4f} | {q['snr_db']:.1f} "
            f"| {q['fp32_mb']:.1f} -> {q['w8a8_mb']:.1f} |"
        )
    return "\n".join(lines)


def project_quantizer_file(path: Path, calibration: list[Path]) -> Path:
    """The w8a8 file made with the project's TFLite quantizer as it is (reused if there)."""
    if not path.is_file():
        with atomic.atomic_path(path) as staged:
            lite0.write_w8a8_tflite(
                lite0.load_model(), staged, calibration, relu6_annotations=False
            )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an ImageFolder of val photos")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (layouts, files)")
    parser.add_argument("--calib", type=int, default=32, help="w8a8 calibration: first N (32)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    photos, paths = photos_of(args.data)
    if not 0 < args.calib < len(photos):
        raise SystemExit(f"--calib {args.calib}: expected 1..{len(photos) - 1}")
    pytorch = dict(
        zip(
            (p.name for p in photos),
            lite0.pytorch_logits(lite0.load_model(), paths),
            strict=True,
        )
    )
    calibration = paths[: args.calib]
    calibration_keys = [p.name for p in photos[: args.calib]]
    source_key = hashlib.sha256(
        b"".join(path.read_bytes() for path in (Path(lite0.__file__), *QUANTIZER_SOURCES))
    ).hexdigest()[:12]
    artifacts_dir = args.work / f"artifacts-calib{args.calib}-{source_key}"
    artifacts = lite0.write_all(artifacts_dir, calibration)
    artifacts[W8A8_PROJECT] = project_quantizer_file(artifacts_dir / W8A8_PROJECT, calibration)
    layouts_root = args.work / "layouts"
    shutil.rmtree(layouts_root, ignore_errors=True)  # cheap to rebuild; never half-built
    layouts = {name: BUILDERS[name](layouts_root / name, photos) for name in LAYOUTS}
    files = [artifacts[name] for name in FLOAT_FILES]
    result = {
        "data": str(args.data),
        "images": len(photos),
        "pytorch_correct": sum(pytorch_right(pytorch, photos).values()),
        "float": float_rows(files, layouts, args.work, photos, pytorch),
        "w8a8": w8a8_rows(artifacts, layouts, args.work, calibration_keys),
    }
    held_out = pytorch_right(pytorch, photos[args.calib :])
    result["pytorch_correct_held_out"] = sum(held_out.values())
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
