"""Audits at scale: peak memory and wall time vs the runtimes' own time, on a generated folder.

Generates a seeded ImageFolder of JPEGs (``val/<wnid>/ILSVRC2012_val_N.JPEG``, labels spread over
the 1000 classes), then runs ``edge-convnext audit ARTIFACTS --data FOLDER`` in a child process
and reports what the issue asks for:

* peak RSS of the audit process (``getrusage`` of the child, and RSS sampled every second, to
  show it does not grow with the images scored): the goal is < 2 GB for 50,000 images and 7
  artifacts;
* the audit's own ``timing`` from ``report.json``: ``wall_s`` (scoring, decode and chunk writes
  included) against ``inference_s`` (the runtimes' timed calls summed over the artifacts): the
  goal is wall within 10% of inference on a 1,000-image audit.

Small images measure memory and the audit's own overhead; photo-size ones (``--size 500x375``,
like ImageNet's) put the decoding cost in. Run it alone on the machine (``flock -x
/tmp/cpu.lock``)::

    python bench/audit_scale.py --images 50000 --size 64x48 --folder /tmp/scale50k \\
        dist/android/*.tflite dist/executorch/*.pte dist/ios/*.mlpackage
    python bench/audit_scale.py --images 1000 --size 500x375 --folder /tmp/scale1k \\
        ckpt/ dist/android/*.tflite dist/executorch/*.pte dist/ios/*.mlpackage

The folder is generated once and reused when it already holds the images asked for. Extra
arguments after ``--`` go to ``audit`` (e.g. ``-- --workers 2 --threads 2``).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edge_convnext.labels import imagenet_wnids
from edge_convnext.synthetic import textured_image

GOAL_RSS_GB = 2.0
GOAL_WALL_OVER_INFERENCE = 1.10


def generate(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> float:
    """``count`` JPEGs of ``size = (width, height)`` under ``folder/val/<wnid>/``; seconds taken.

    Photo-size images are the textured generator's; small ones a class colour plus noise (fast
    enough for 50,000).
    """
    started = time.perf_counter()
    wnids = imagenet_wnids()
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0, 255, (len(wnids), 3))
    width, height = size
    for number in range(1, count + 1):
        label = (number - 1) % len(wnids)
        if width * height > 100_000:
            image = textured_image(seed + number, size)
        else:
            noise = rng.normal(0, 30, (height, width, 3))
            image = Image.fromarray(np.clip(colours[label] + noise, 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        path = folder / "val" / wnids[label] / f"ILSVRC2012_val_{number:08d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
    return time.perf_counter() - started


def existing(folder: Path) -> int:
    return sum(1 for _ in folder.glob("val/*/*.JPEG"))


class RssSampler:
    """RSS of a process every ``interval`` seconds, from /proc (Linux)."""

    def __init__(self, pid: int, interval: float = 1.0):
        self.pid, self.interval, self.samples = pid, interval, []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while True:
            try:
                text = status.read_text()
            except OSError:
                return
            kb = next(
                (int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS")), 0
            )
            self.samples.append((time.perf_counter(), kb / 1e6))
            time.sleep(self.interval)


def run_audit(models: list[str], folder: Path, out: Path, extra: list[str]) -> dict:
    """The audit in a child process: exit status, wall time, peak RSS and its RSS over time."""
    command = [sys.executable, "-m", "edge_convnext", "audit", *models, "--data", str(folder)]
    command += ["--out", str(out), "--no-progress", *extra]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command)
    sampler = RssSampler(process.pid)
    status = process.wait()
    wall = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # kB on Linux
    samples = [gb for _, gb in sampler.samples]
    quarters = [samples[min(len(samples) - 1, int(q * len(samples)))] for q in (0.25, 0.5, 0.75)]
    return {
        "status": status,
        "wall_s": wall,
        "peak_rss_gb": peak_gb,
        "rss_gb_at_25_50_75_percent_of_run": quarters if samples else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="artifacts / checkpoint dirs to audit")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", default="64x48", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--folder", type=Path, required=True, help="generated data (reused)")
    parser.add_argument("--out", type=Path, default=None, help="audit output (FOLDER/audit)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:split]), argv[split + 1 :]
    size = tuple(int(v) for v in args.size.lower().split("x"))
    have = existing(args.folder)
    if have != args.images:
        if have:
            raise SystemExit(f"{args.folder} holds {have} images, not {args.images}: remove it")
        print(f"generating {args.images} JPEGs of {size[0]}x{size[1]} in {args.folder} ...")
        print(f"  {generate(args.folder, args.images, size):.1f} s")
    out = args.out or args.folder / "audit"
    measured = run_audit(args.models, args.folder, out, extra)
    timing = json.loads((out / "report.json").read_text())["timing"]
    ratio = timing["wall_s"] / timing["inference_s"]
    result = {
        "images": args.images,
        "image_size": args.size,
        "artifacts": len(args.models),
        **measured,
        "audit_timing": timing,
        "wall_over_inference": ratio,
        "goals": {
            f"peak RSS < {GOAL_RSS_GB} GB": measured["peak_rss_gb"] < GOAL_RSS_GB,
            "wall within 10% of summed inference": ratio <= GOAL_WALL_OVER_INFERENCE,
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
