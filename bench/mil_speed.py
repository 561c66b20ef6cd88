"""Images/s of the numpy MIL reference evaluator (Core ML runner off macOS) on full-size programs.

For each ``.mlpackage`` under ``--dir`` (what ``edge-convnext export --target coreml`` writes,
e.g. ``--random-init convnext-tiny-224`` at recipes fp32, fp16, w8a8) and each batch size, a fresh
process loads the runner (``targets.coreml.load``), runs one warm-up batch, then times
``--rounds`` calls of ``runner(crops)`` on ``uint8 (N, 224, 224, 3)`` synthetic photo-like crops.
Batch ``0`` means the runner's ``preferred_batch`` (1 where it has none). Peak RSS is the child's
``ru_maxrss`` (the coremltools import and the loaded program included).

    flock -x /tmp/cpu.lock python bench/mil_speed.py --dir /tmp/mil --batches 1,0

Before/after: ``--src DIR`` measures the code of another checkout instead of the installed one,
e.g. ``git worktree add /tmp/before <commit>`` then ``--src /tmp/before``.

Prints one line per (artifact, batch) and, with ``--json``, writes the rows there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def use_checkout(src: Path) -> None:
    """Import ``edge_convnext`` (with its ``targets``/``quantize`` sub-packages, which live at the
    top of a checkout) from the checkout ``src`` instead of the installed package."""
    packages = {
        "edge_convnext": src / "edge_convnext",
        "edge_convnext.targets": src / "targets",
        "edge_convnext.quantize": src / "quantize",
    }
    modules = {}
    for name, folder in packages.items():
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        modules[name] = importlib.util.module_from_spec(spec)
        sys.modules[name] = modules[name]  # all three first: their imports resolve here
    for name in ("edge_convnext", "edge_convnext.targets"):  # quantize: imported on use
        modules[name].__spec__.loader.exec_module(modules[name])


def crops(count: int, size: int = 224) -> np.ndarray:
    """``count`` seeded photo-like RGB crops, ``uint8 (count, size, size, 3)``."""
    from edge_convnext.synthetic import textured_image

    return np.stack([np.asarray(textured_image(i, (size, size))) for i in range(count)])


def measure(path: Path, batch: int, rounds: int) -> dict:
    """Time ``runner(crops)`` in this process; return one result row."""
    from edge_convnext.targets import coreml

    start = time.perf_counter()
    runner = coreml.load(path)
    load_s = time.perf_counter() - start
    preferred = int(getattr(runner, "preferred_batch", 1))
    batch = batch or preferred
    images = crops(batch)
    runner(images)  # warm-up: first-touch allocations, BLAS thread start
    start = time.perf_counter()
    for _ in range(rounds):
        runner(images)
    seconds = (time.perf_counter() - start) / rounds
    return {
        "artifact": path.name,
        "batch": batch,
        "preferred_batch": preferred,
        "rounds": rounds,
        "s_per_batch": round(seconds, 4),
        "images_per_s": round(batch / seconds, 3),
        "load_s": round(load_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mil"), help="folder of .mlpackage")
    parser.add_argument("--batches", default="1,0", help="comma-separated; 0 = preferred_batch")
    parser.add_argument("--rounds", type=int, default=2, help="timed calls per row")
    parser.add_argument("--src", type=Path, help="measure the code of this checkout instead")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.one:
        if args.src:
            use_checkout(args.src)
        print(json.dumps(measure(args.one, int(args.batches), args.rounds)))
        return
    print(f"loadavg {os.getloadavg()}, cpus {os.cpu_count()}", flush=True)
    rows = []
    for path in sorted(args.dir.glob("*.mlpackage")):
        for batch in (int(b) for b in args.batches.split(",")):
            command = [sys.executable, __file__, "--one", str(path), "--batches", str(batch)]
            command += ["--rounds", str(args.rounds)]
            command += ["--src", str(args.src.resolve())] if args.src else []
            row = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
            rows.append(row)
            print(
                f"{row['artifact']:42s} batch {row['batch']:3d}  {row['images_per_s']:7.3f} img/s"
                f"  ({row['s_per_batch']:.3f} s/batch, peak RSS {row['peak_rss_mb']} MB)",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
