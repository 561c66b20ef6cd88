"""``export --target-snr``: the SNR asked, the SNR its search measured (on the calibration images
held back from the quantizer, one in 4), and the SNR on held-out photos, for one seed model,
recipe and target.

For each ``--targets`` value the artifact is what ``edge-convnext export --target-snr DB`` writes
(``pipeline.build``, ``float-nchw`` contract, calibrated on the first ``--calib`` photos), run by
the toolkit's runner on the other photos and compared with eager fp32 PyTorch (portable rewrites,
as in ``bench/speed.py``). Results go to ``bench/results/target-snr-*.{json,md}``.

    python bench/target_snr.py --seed-model convnext-tiny-224 --recipe w4a8 --targets 30,32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from speed import DEFAULT_DATA, RESULTS, Variant, _link_images, _workdir, agreement, load_images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-model", default="convnext-tiny-224")
    parser.add_argument("--target", default="executorch")
    parser.add_argument("--recipe", default="w4a8")
    parser.add_argument("--targets", required=True, help="comma-separated SNRs in dB")
    parser.add_argument("--calib", type=int, default=32, help="calibration images (first N)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workdir", type=Path, help="keep checkpoint and artifacts here")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    from edge_convnext import manifest, pipeline, rewrites, targets
    from edge_convnext.preprocess import find_images
    from edge_convnext.testing import nontrivial_model

    torch.set_num_threads(2)
    images = load_images(args.data)
    held_out = images[args.calib :]
    seeded = nontrivial_model(args.seed_model)
    reference = rewrites.apply(seeded.module, targets.PORTABLE_REWRITES).eval()
    with torch.inference_mode():
        expected = np.concatenate([reference(torch.from_numpy(x[None])).numpy() for x in held_out])
    rows = []
    with _workdir(args.workdir) as workdir:
        workdir = Path(workdir)
        checkpoint = workdir / args.seed_model
        if not checkpoint.is_dir():
            seeded.hf_model.save_pretrained(checkpoint)
        calibration = _link_images(
            find_images(args.data)[: args.calib], args.data, workdir / f"calib{args.calib}"
        )
        fp32 = pipeline.build(
            str(checkpoint), args.target, "fp32", workdir / "fp32", contract="float-nchw"
        )
        for target_db in (float(value) for value in args.targets.split(",")):
            started = time.perf_counter()
            artifact = pipeline.build(
                str(checkpoint),
                args.target,
                args.recipe,
                workdir / f"{args.recipe}-{target_db:g}dB",
                contract="float-nchw",
                calibration=pipeline.Calibration(calibration, args.calib, target_snr=target_db),
                progress=False,
            )
            seconds = time.perf_counter() - started
            search = manifest.read(artifact).quantization.target_snr
            runner = targets.get(args.target).load(artifact, threads=2)

            scores = agreement(Variant(runner.run_contract_input), held_out, expected)
            rows.append(
                {
                    "target_db": target_db,
                    "calibration_snr_db": search["calibration_snr_db"],
                    "held_out_snr_db": round(scores["snr_db"], 2),
                    "kept": len(search["kept_layers"]),
                    "kept_layers": search["kept_layers"],
                    "tried": search["tried"],
                    "size_vs_fp32_file": round(
                        manifest.size_of(artifact) / manifest.size_of(fp32), 4
                    ),
                    "export_s": round(seconds, 1),
                    **{k: scores[k] for k in ("cosine_mean", "kl", "top1_agreement")},
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {
        "seed_model": args.seed_model,
        "target": args.target,
        "recipe": args.recipe,
        "calibration_images": args.calib,
        "held_out_images": len(held_out),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"target-snr-{args.seed_model}-{args.target}-{args.recipe}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"## {args.seed_model}, {args.target} {args.recipe}: --target-snr on {args.calib} "
        f"calibration photos, scored on {len(held_out)} held-out",
        "",
        "| asked dB | search dB | held-out dB | held-out - asked | kept | size vs fp32 "
        "| cosine | KL | agree | export s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['target_db']:g} | {row['calibration_snr_db']:.2f} | "
            f"{row['held_out_snr_db']:.2f} | {row['held_out_snr_db'] - row['target_db']:+.2f} | "
            f"{row['kept']} | {row['size_vs_fp32_file']:.3f}x | {row['cosine_mean']:.5f} | "
            f"{row['kl']:.1e} | {100 * row['top1_agreement']:.1f}% | {row['export_s']:.0f} |"
        )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
