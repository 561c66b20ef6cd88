"""Would ``edge-convnext build --jobs N`` pay? The three fp32 exports of a seeded ConvNeXt-T, timed
three ways on this machine:

* ``one process``: load once, export tflite, executorch, coreml one after another (what ``build``
  does);
* ``processes, one after another``: three ``edge-convnext export`` processes in turn (each
  imports and loads);
* ``processes, side by side``: the same three processes at once (what spawned ``--jobs``
  workers would do; forked workers sharing the loaded model hang in the converters' thread pools).

    python bench/build_jobs.py --out /tmp/build-jobs

Run it alone on the machine. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGETS = ("tflite", "executorch", "coreml")
SEED = "convnext-tiny-224"


def in_one_process(out: Path) -> dict:
    """Imports, load and the three exports in this process, each timed."""
    started = time.perf_counter()
    import coremltools  # noqa: F401  (imported up front: build pays imports once)
    import executorch.exir  # noqa: F401
    import litert_torch  # noqa: F401

    from edge_convnext import contracts, pipeline, targets
    from edge_convnext.quantize import recipes

    fp32 = recipes.get("fp32")
    rewrites = targets.get("tflite").rewrites_for(fp32)
    loaded = pipeline.prepare_model(SEED, rewrites, random=True, seed=0)
    timings = {"imports_and_load_s": time.perf_counter() - started}
    for name in TARGETS:
        began = time.perf_counter()
        targets.get(name).export(
            loaded, fp32, out / name, contracts.get("app"), targets.Quantization(), progress=False
        )
        timings[f"{name}_s"] = time.perf_counter() - began
    timings["total_s"] = time.perf_counter() - started
    return timings


def export_command(target: str, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "edge_convnext", "export", "--random-init", SEED,
        "--target", target, "-o", str(out), "--no-progress",
    ]  # fmt: skip


def processes(out: Path, side_by_side: bool) -> float:
    started = time.perf_counter()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if side_by_side:
        running = [subprocess.Popen(export_command(t, out), **quiet) for t in TARGETS]
        codes = [process.wait() for process in running]
    else:
        codes = [subprocess.run(export_command(t, out), **quiet).returncode for t in TARGETS]
    if any(codes):
        raise SystemExit(f"an export failed: exit codes {codes}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (emptied)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    result = {
        "processes_one_after_another_s": processes(args.out / "sequential", side_by_side=False),
        "processes_side_by_side_s": processes(args.out / "side-by-side", side_by_side=True),
        "one_process": in_one_process(args.out / "one-process"),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
