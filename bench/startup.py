"""Start-up wall time of ``edge-convnext predict --help`` and of a one-photo ``predict``.

Each command runs in a fresh interpreter (``python -m edge_convnext ...``), timed from spawn to
exit. With ``--before TREE`` (a source tree of an earlier commit, e.g. ``git archive COMMIT |
tar -x -C /tmp/before``) the earlier code and this checkout run alternately, run by run, so both
see the same load; the load average is printed before and after. Both trees run from staging
site-dirs that mirror the installed layout (``targets/`` and ``quantize/`` become
``edge_convnext.targets`` / ``edge_convnext.quantize``), with the same interpreter and cwd.
``--installed`` times the ``edge-convnext`` on PATH instead (what runs inside the emulated Pi
root, where only the wheel is installed), alternating with ``--before-exe`` (the earlier code's
``edge-convnext``, installed in its own venv) if given.

    python bench/startup.py --model tiny.fp32.app.tflite --photo tests/fixtures/photos/chelsea.jpg
    python bench/startup.py --before /tmp/before --model M.tflite --photo P.jpg --runs 10
    python bench/startup.py --installed --model M.tflite --photo P.jpg --runs 5   # on a Pi
    python bench/startup.py --installed --before-exe venv-before/bin/edge-convnext ...

Run it under an otherwise idle machine (or a lock shared with whatever else runs): start-up is
mostly CPU time, so other load inflates every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = {"targets": "targets", "quantize": "quantize"}  # pyproject's package-dir mapping


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def stage(tree: Path, into: Path) -> Path:
    """A site-dir whose ``edge_convnext`` is ``tree``'s, laid out as installed (symlinks)."""
    package = into / "edge_convnext"
    package.mkdir(parents=True)
    for entry in (tree / "edge_convnext").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry.resolve())
    for name, source in SUBPACKAGES.items():
        if (tree / source).is_dir():
            (package / name).symlink_to((tree / source).resolve())
    return into


def timed(argv: list[str], env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a small .tflite (its sidecar beside it)")
    parser.add_argument("--photo", required=True, help="the one photo predict classifies")
    parser.add_argument("--before", type=Path, help="source tree of the earlier code")
    parser.add_argument("--before-model", help="the model for --before, if it needs its own")
    parser.add_argument("--installed", action="store_true", help="time `edge-convnext` on PATH")
    parser.add_argument("--before-exe", help="with --installed: the earlier code's edge-convnext")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.installed and args.before:
        parser.error("--installed times installed commands: give the earlier one as --before-exe")
    if args.before_exe and not args.installed:
        parser.error("--before-exe goes with --installed (a source tree goes in --before)")
    model, photo = str(Path(args.model).resolve()), str(Path(args.photo).resolve())

    work = Path(tempfile.mkdtemp(prefix="startup-"))
    # Bytecode caches on, as an installed package has them (pip compiles them at install): a
    # PYTHONDONTWRITEBYTECODE=1 environment would otherwise time compiling every module.
    base = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    }
    base["TF_CPP_MIN_LOG_LEVEL"] = "2"
    versions: dict[str, tuple[list[str], dict[str, str], str]] = {}
    if args.installed:
        exe = shutil.which("edge-convnext")
        if exe is None:
            raise SystemExit("--installed: no edge-convnext on PATH")
        versions["now"] = ([exe], base, model)
        if args.before_exe:
            before_model = str(Path(args.before_model or args.model).resolve())
            versions["before"] = ([str(Path(args.before_exe).resolve())], base, before_model)
    else:
        python = [sys.executable, "-m", "edge_convnext"]
        site = stage(REPO, work / "now")
        versions["now"] = (python, {**base, "PYTHONPATH": str(site)}, model)
        if args.before:
            site = stage(args.before, work / "before")
            before_model = str(Path(args.before_model or args.model).resolve())
            versions["before"] = (python, {**base, "PYTHONPATH": str(site)}, before_model)
    commands = {
        "predict --help": lambda m: ["predict", "--help"],
        "predict (1 photo)": lambda m: ["predict", m, photo, "--json"],
    }
    times: dict[str, dict[str, list[float]]] = {v: {c: [] for c in commands} for v in versions}
    try:
        for prefix, env, m in versions.values():  # warm the page cache and __pycache__
            for make in commands.values():
                timed(prefix + make(m), env, str(work))
        load_before = loadavg()
        print(f"load average before: {load_before}", flush=True)
        order = list(versions)
        for run in range(args.runs):
            for name in order if run % 2 == 0 else order[::-1]:  # alternate who goes first
                prefix, env, m = versions[name]
                for command, make in commands.items():
                    times[name][command].append(timed(prefix + make(m), env, str(work)))
        load_after = loadavg()
        print(f"load average after:  {load_after}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "python": sys.version.split()[0],
        "runs": args.runs,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "seconds": {},
    }
    for name in versions:
        for command in commands:
            t = times[name][command]
            figures = {"median": statistics.median(t), "min": min(t), "max": max(t)}
            result["seconds"][f"{name}: {command}"] = {k: round(v, 3) for k, v in figures.items()}
            print(
                f"{name:>9}  {command:<18}  median {figures['median']:.3f} s  "
                f"(min {figures['min']:.3f}, max {figures['max']:.3f}, {len(t)} runs)"
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
