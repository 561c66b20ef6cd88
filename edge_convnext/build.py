"""``edge-convnext build``: every target's float and int8 files, audited, laid out for app bundling.

The flow (``DESIGN.md``), over the whole support matrix instead of one target x recipe::

    plan = matrix(targets, recipes) ∩ support     printed first: build / up to date / refused (why)
    for each rewrite set:  load + rewrite once; calibration images decoded once, and the
                           target-independent calibration steps (SmoothQuant, GPTQ) run once
      for each cell:       key = hash(checkpoint content, recipe, calibration set, rewrites,
                                      contract, tool versions, toolkit code)
                           key in build.json and the artifact verifies (size + sha256 from its
                           sidecar)?  skip : export (the target writes artifact + sidecar whole)
    audit(all artifacts, fp32 reference, audit set minus calibration images) -> dist/report/
    dist/{ios,android,executorch}/<artifact> + sidecar + labels.txt;  dist/build.json

A cell that fails is recorded (``build.json``, the report) with its error and the others go
on; the build then exits 1. ``build.json`` is rewritten (atomically) after every cell, so a
killed build resumes where it stopped: complete artifacts verify and are kept, a half-written
one never had its final name. Nothing here decides by mtimes.

Without ``--calib`` / ``--audit-data`` the build uses a generated offline sample
(:func:`sample_images`): seeded photo-like images, written under ``dist/inputs/``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from . import atomic, contracts, manifest, targets
from .errors import EXIT_FAILED, EXIT_OK, EdgeConvnextError, UsageError
from .quantize import recipes

FORMAT_VERSION = 1
BUILD_JSON = "build.json"
REPORT_DIR = "report"
INPUTS_DIR = "inputs"
DEFAULT_RECIPES = ("fp32", "fp16", "w8a8")  # each target builds those it supports
QAT_RECIPE = "w8a8-qat"
SAMPLE_CALIB_IMAGES = 32
SAMPLE_AUDIT_IMAGES = 16
SHIP_SNR_DB = 30.0  # the smallest artifact at or above this SNR is the one a target ships
# The toolkit's own code that shapes an artifact: an edit to it rebuilds (cli, audit, report don't).
_CODE_FILES = ("pipeline.py", "models.py", "rewrites.py", "contracts.py", "preprocess.py")


@dataclass(frozen=True)
class Options:
    """What ``edge-convnext build`` was asked for (one field per command-line option)."""

    model: str
    out: Path
    targets: tuple[str, ...] | None = None  # None: every registered target
    recipes: tuple[str, ...] | None = None  # None: DEFAULT_RECIPES each target supports
    random_init: bool = False
    seed: int = 0
    calib: Path | None = None  # None: the generated sample (dist/inputs/calib)
    calib_size: int | None = None
    calib_seed: int = 0
    audit_data: Path | None = None  # None: the generated sample (dist/inputs/audit)
    per_class: int | None = None
    limit: int | None = None
    layout: str | None = None
    qat_data: Path | None = None
    qat_steps: int | None = None
    contract: str = contracts.DEFAULT.name
    threads: int | None = None
    force: bool = False
    audit: bool = True
    progress: bool = True


@dataclass
class Cell:
    """One target x recipe of the plan."""

    target: str
    recipe: str
    status: str  # "build", "up to date", "refused"; after the run "built" or "failed"
    reason: str = ""
    key: str = ""
    inputs: dict = field(default_factory=dict)
    artifact: str = ""  # relative to the dist folder
    outputs: dict = field(default_factory=dict)
    error: str = ""
    seconds: float | None = None

    @property
    def name(self) -> str:
        return f"{self.target}/{self.recipe}"

    def record(self) -> dict:
        data = asdict(self)
        if self.status == "up to date":
            data["status"] = "built"
        return data


@dataclass
class Plan:
    options: Options
    cells: list[Cell]
    checkpoint: dict
    calibration: dict
    previous: dict

    def of(self, status: str) -> list[Cell]:
        return [cell for cell in self.cells if cell.status == status]

    def lines(self) -> list[str]:
        """The plan as printed before anything runs."""
        width = max((len(cell.name) for cell in self.cells), default=10) + 2
        lines = [f"plan for {self.options.model} -> {self.options.out}/:"]
        for cell in self.cells:
            why = f"  ({cell.reason})" if cell.reason else ""
            where = f"  {cell.artifact}" if cell.artifact and cell.status != "refused" else ""
            lines.append(f"  {cell.name:<{width}} {cell.status:<11}{where}{why}")
        counts = ", ".join(
            f"{len(self.of(s))} {s}" for s in ("build", "up to date", "refused") if self.of(s)
        )
        lines.append(f"  ({counts})")
        return lines


# --- inputs: defaults, fingerprints -------------------------------------------------------


def sample_images(folder: Path, count: int, seed: int, labelled: bool = False) -> Path:
    """Write ``count`` seeded photo-like JPEGs (gradients, blobs, noise) into ``folder``.

    The offline default for calibration and audit images: the same bytes on every run (so the
    cache keys hold), and files that already have them are not rewritten. With ``labelled``, a
    ``labels.csv`` (``path,label``) makes the folder an audit set; its labels are placeholders
    (class 0), so the build reports no top-1 for it, only agreement with the fp32 reference.
    """
    import io

    from .synthetic import textured_image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        height, width = 240 + 16 * (index % 5), 320 - 16 * (index % 3)
        buffer = io.BytesIO()
        textured_image(seed + index, (width, height)).save(buffer, "JPEG", quality=90)
        name = f"sample_{seed + index:04d}.jpg"
        names.append(name)
        path = folder / name
        if not path.is_file() or path.read_bytes() != buffer.getvalue():
            atomic.write_bytes(path, buffer.getvalue())
    if labelled:
        text = "path,label\n" + "".join(f"{name},0\n" for name in names)
        if not (folder / "labels.csv").is_file() or (folder / "labels.csv").read_text() != text:
            atomic.write_text(folder / "labels.csv", text)
    return folder


def checkpoint_fingerprint(model: str, random_init: bool, seed: int) -> dict:
    """The checkpoint's content hash, without loading it (no torch import).

    A directory: sha256 of its files. ``--random-init``: the seed name and seed with the torch
    and transformers versions that draw the weights. A Hub id: its cached snapshot's files.
    """
    if random_init:
        versions = manifest.tool_versions(("torch", "transformers"))
        content = json.dumps({"random_init": model, "seed": seed, "tools": versions})
        return {"source": f"random-init:{model}:seed={seed}", "sha256": _sha(content)}
    path = Path(model).expanduser()
    if not path.exists():
        path = _hub_snapshot(model)
    if path is None:
        return {"source": model, "sha256": None}  # load() decides; the weights hash it later
    return {"source": str(path), "sha256": manifest.sha256_of(path)}


def _hub_snapshot(hub_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # not cached (or not a Hub id): the load reports it
        return None


def calibration_fingerprint(folder: Path, size: int, seed: int) -> dict:
    """The calibration images a recipe of ``size`` images would use: keys and one hash."""
    from .quantize import calibration

    paths = calibration.pick(folder, size, seed)
    files = [(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths]
    return {
        "source": str(folder),
        "size": size,
        "seed": seed,
        "keys": [name for name, _ in files],
        "sha256": _sha(json.dumps([size, seed, files])),
    }


def code_fingerprint() -> str:
    """sha256 of the toolkit's own Python files: an edit to a converter path rebuilds."""
    from . import quantize

    root = Path(__file__).parent
    files = [root / name for name in _CODE_FILES if (root / name).is_file()]
    for package in (targets, quantize):  # installed from the repo's top-level folders
        files += sorted(Path(package.__file__).parent.glob("*.py"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- the plan --------------------------------------------------------------------------------


def bundle_dir(target: targets.Target) -> str:
    """The target's folder in dist/: ``ios``, ``android``, ``executorch`` (or its name)."""
    return target.bundle_dir or target.name


def matrix(options: Options) -> list[tuple[str, str]]:
    """Every target x recipe asked for, supported or not (refusals are printed, not dropped)."""
    wanted_targets = options.targets or tuple(targets.names())
    for name in wanted_targets:
        targets.get(name)  # an unknown target is a usage error naming the valid ones
    wanted_recipes = options.recipes or DEFAULT_RECIPES
    for name in wanted_recipes:
        recipes.get(name)
    cells = []
    for target in wanted_targets:
        supported = targets.get(target).recipes
        own = list(wanted_recipes)
        if options.qat_data is not None and QAT_RECIPE in supported and QAT_RECIPE not in own:
            own.append(QAT_RECIPE)
        if options.recipes is None:  # defaults: only what the target takes, no refusals listed
            own = [r for r in own if r in supported]
        cells += [(target, recipe) for recipe in own]
    return cells


def load_previous(out: Path) -> dict:
    """The last build.json in ``out`` (empty when there is none or it cannot be read)."""
    try:
        data = json.loads((Path(out) / BUILD_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format_version") == FORMAT_VERSION else {}


def make_plan(options: Options) -> Plan:
    """Decide every cell: build, up to date (key matches and the artifact verifies) or refused.

    Cheap: hashes files, reads sidecars, loads no model.
    """
    out = Path(options.out)
    contract = contracts.get(options.contract)
    _check_options(options)
    calib_folder = _calib_folder(options)
    checkpoint = checkpoint_fingerprint(options.model, options.random_init, options.seed)
    previous = load_previous(out)
    old_cells = previous.get("cells", {})
    code = code_fingerprint()
    calibrations: dict[int, dict] = {}
    cells = []
    for target_name, recipe_name in matrix(options):
        target = targets.get(target_name)
        recipe = recipes.get(recipe_name)
        if recipe_name not in target.recipes:
            reason = f"{target_name} takes {', '.join(target.recipes)}"
            cells.append(Cell(target_name, recipe_name, "refused", reason))
            continue
        inputs = {
            "checkpoint": checkpoint,
            "recipe": asdict(recipe),
            "rewrites": list(target.rewrites_for(recipe)),
            "contract": contract.name,
            "tools": manifest.tool_versions(target.tool_packages),
            "code": code,
            "calibration": None,
            "qat": None,
        }
        if recipe.needs_calibration or target.calibration(recipe) is not None:
            size = options.calib_size or recipe.calibration_size
            if size not in calibrations:
                calibrations[size] = calibration_fingerprint(calib_folder, size, options.calib_seed)
            inputs["calibration"] = {k: v for k, v in calibrations[size].items() if k != "keys"}
        if recipe.is_qat:
            inputs["qat"] = _qat_inputs(options)
        inputs = json.loads(json.dumps(inputs, default=str))  # as build.json will hold it
        cell = Cell(target_name, recipe_name, "build", inputs=inputs)
        cell.key = _sha(json.dumps(inputs, sort_keys=True, default=str))
        cell.artifact = str(
            Path(bundle_dir(target))
            / target.artifact_name(_model_name(options), recipe_name, contract.name)
        )
        old = old_cells.get(cell.name, {})
        if options.force:
            cell.reason = "--force"
        elif old.get("status") != "built" or old.get("key") != cell.key:
            cell.reason = "new" if not old else _what_changed(old.get("inputs", {}), inputs)
        else:
            problem = verify(out / old["artifact"])
            if problem is None:
                cell.status, cell.artifact, cell.outputs = (
                    "up to date",
                    old["artifact"],
                    old["outputs"],
                )
                cell.seconds = old.get("seconds")
            else:
                cell.reason = problem
        cells.append(cell)
    calibration = {
        "source": str(calib_folder),
        "seed": options.calib_seed,
        "sets": {str(size): fp for size, fp in calibrations.items()},
    }
    return Plan(options, cells, checkpoint, calibration, previous)


def _model_name(options: Options) -> str:
    """The short name artifacts carry (``models.LoadedModel.name``), without loading."""
    from .seeds import find_seed

    path = Path(options.model).expanduser()
    if not options.random_init and path.exists():
        return path.name
    spec = find_seed(options.model)
    return spec.name if spec is not None else options.model.rsplit("/", 1)[-1]


def _what_changed(old: dict, new: dict) -> str:
    changed = [key for key in new if old.get(key) != new[key]]
    return "changed: " + ", ".join(changed) if changed else "not built"


def verify(artifact: Path) -> str | None:
    """None if ``artifact`` is complete (size and sha256 match its sidecar), else why not."""
    if not artifact.exists():
        return "artifact missing"
    try:
        recorded = manifest.read(artifact)
    except EdgeConvnextError as error:
        return f"sidecar: {error}"
    if manifest.size_of(artifact) != recorded.size_bytes:
        return "size differs from its sidecar"
    if manifest.sha256_of(artifact) != recorded.sha256:
        return "sha256 differs from its sidecar"
    return None


def _check_options(options: Options) -> None:
    if (options.qat_data is None) != (options.qat_steps is None):
        raise UsageError("--qat-data DIR and --qat-steps N go together")
    if options.calib is not None and not Path(options.calib).is_dir():
        raise UsageError(f"--calib {options.calib}: not a directory of images")
    if options.audit_data is not None and not Path(options.audit_data).exists():
        raise UsageError(f"--audit-data {options.audit_data}: no such file or folder")
    if options.qat_data is not None and not Path(options.qat_data).is_dir():
        raise UsageError(f"--qat-data {options.qat_data}: not a directory of images")


def _calib_folder(options: Options) -> Path:
    if options.calib is not None:
        return Path(options.calib)
    return sample_images(Path(options.out) / INPUTS_DIR / "calib", SAMPLE_CALIB_IMAGES, 1000)


def _audit_folder(options: Options) -> Path:
    if options.audit_data is not None:
        return Path(options.audit_data)
    folder = Path(options.out) / INPUTS_DIR / "audit"
    return sample_images(folder, SAMPLE_AUDIT_IMAGES, 5000, labelled=True)


def _qat_inputs(options: Options) -> dict:
    files = sorted(p for p in Path(options.qat_data).rglob("*") if p.is_file())
    return {
        "data": str(options.qat_data),
        "steps": options.qat_steps,
        "sha256": _sha(json.dumps([(str(p.name), manifest.sha256_of(p)) for p in files])),
    }


# --- running ---------------------------------------------------------------------------------


class Stages:
    """One progress display across the build: ``[k/N] stage: what ... done in Ts`` on stderr,
    with the calibration and audit bars below it."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, 0, enabled

    def start(self, text: str) -> float:
        self.done += 1
        if self.enabled:
            print(f"[{self.done}/{self.total}] {text} ...", file=sys.stderr, flush=True)
        return time.perf_counter()

    def finish(self, text: str, started: float) -> float:
        seconds = time.perf_counter() - started
        if self.enabled:
            print(f"      {text} ({seconds:.1f} s)", file=sys.stderr, flush=True)
        return seconds


@dataclass
class Result:
    plan: Plan
    report: Path | None
    build_json: Path
    exit_status: int


def run(options: Options, plan: Plan | None = None, echo=print) -> Result:
    """Build, audit and lay out everything ``plan`` says (made from ``options`` if not given).

    Returns the exit status: 0 when every planned cell built or was up to date, 1 when one
    failed (it is recorded; the others were built and audited).
    """
    plan = plan or make_plan(options)
    for line in plan.lines():
        echo(line)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    to_build = plan.of("build")
    groups = _rewrite_groups(to_build)
    stages = Stages(len(groups) + len(to_build) + (1 if options.audit else 0))  # bars aside
    state = _Writer(plan)
    state.write()
    if to_build:
        _build_cells(plan, groups, stages, state)
    report_path = None
    if options.audit:
        report_path = _audit(plan, stages, state)
    state.write()
    failed = [cell for cell in plan.cells if cell.status == "failed"]
    for cell in failed:
        echo(f"failed: {cell.name}: {cell.error.splitlines()[-1] if cell.error else ''}")
    return Result(plan, report_path, out / BUILD_JSON, EXIT_FAILED if failed else EXIT_OK)


def _rewrite_groups(cells: list[Cell]) -> dict[tuple[str, ...], list[Cell]]:
    groups: dict[tuple[str, ...], list[Cell]] = {}
    for cell in cells:
        groups.setdefault(tuple(cell.inputs["rewrites"]), []).append(cell)
    return groups


def _build_cells(plan: Plan, groups: dict, stages: Stages, state: _Writer) -> None:
    from . import pipeline
    from .pipeline import Calibration

    options = plan.options
    out = Path(options.out)
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    contract = contracts.get(options.contract)
    calibration = Calibration(
        Path(plan.calibration["source"]), options.calib_size, options.calib_seed
    )
    shared: dict = {}  # decoded calibration images + shared calibration steps, across groups
    labels_written: set[str] = set()
    for rewrite_set, cells in groups.items():
        started = stages.start(f"load + rewrite ({', '.join(rewrite_set)})")
        try:
            loaded = pipeline.prepare_model(
                options.model, rewrite_set, random=options.random_init, seed=options.seed
            )
        except EdgeConvnextError:
            raise  # the checkpoint itself is wrong: nothing can build
        stages.finish("loaded", started)
        for cell in cells:
            target = targets.get(cell.target)
            folder = out / bundle_dir(target)
            started = stages.start(f"export {cell.target} {cell.recipe} -> {cell.artifact}")
            try:
                recipe = recipes.get(cell.recipe)
                from_qat = _qat_checkpoint(options, cell, rewrite_set) if recipe.is_qat else None
                quantization = pipeline.quantize(
                    loaded,
                    target,
                    recipe,
                    contract,
                    calibration,
                    from_qat,
                    options.progress,
                    shared,
                )
                artifact = target.export(
                    loaded, recipe, folder, contract, quantization, progress=options.progress
                )
                if folder.name not in labels_written:
                    atomic.write_text(folder / "labels.txt", "\n".join(loaded.labels) + "\n")
                    labels_written.add(folder.name)
                recorded = manifest.read(artifact)
                cell.artifact = str(artifact.relative_to(out))
                cell.outputs = {
                    "sha256": recorded.sha256,
                    "size_bytes": recorded.size_bytes,
                    "manifest": str(manifest.manifest_path(artifact).relative_to(out)),
                }
                cell.status, cell.error = "built", ""
                cell.seconds = stages.finish("written", started)
            except Exception as error:  # one cell's failure is its row; the others go on
                cell.status = "failed"
                cell.error = _error_text(error)
                cell.seconds = stages.finish(f"FAILED: {cell.error.splitlines()[-1]}", started)
            state.write()
        del loaded
    for folder in {bundle_dir(targets.get(c.target)) for c in plan.of("up to date")}:
        if not (out / folder / "labels.txt").is_file():  # e.g. deleted by hand
            _write_labels_from_manifest(out, folder, plan)


def _write_labels_from_manifest(out: Path, folder: str, plan: Plan) -> None:
    for cell in plan.cells:
        if cell.artifact.startswith(folder + "/") and (out / cell.artifact).exists():
            labels = manifest.read(out / cell.artifact).labels
            atomic.write_text(out / folder / "labels.txt", "\n".join(labels) + "\n")
            return


def _error_text(error: Exception) -> str:
    if isinstance(error, EdgeConvnextError):
        return f"{type(error).__name__}: {error}"
    frames = traceback.format_exception(type(error), error, error.__traceback__)
    return "".join(frames[-6:]).strip()


def _qat_checkpoint(options: Options, cell: Cell, rewrite_set: tuple[str, ...]) -> Path:
    """Train (or resume) the target's QAT run once; its checkpoint lives in dist/inputs/qat."""
    from .pipeline import prepare_model
    from .quantize import qat
    from .quantize.recipes import QATConfig

    key = _sha(
        json.dumps([cell.inputs["checkpoint"], cell.inputs["qat"], cell.target, options.contract])
    )[:16]
    path = Path(options.out) / INPUTS_DIR / "qat" / f"{cell.target}-{key}.qat.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = options.qat_steps or QATConfig().steps
    done = path.is_file() and qat.load_checkpoint(path).get("step", -1) >= steps
    if not done:
        qat.train(
            options.model,
            cell.target,
            Path(options.qat_data),
            path,
            QATConfig(steps=steps),
            load_model=prepare_model,
            contract=options.contract,
            random_init=options.random_init,
            model_seed=options.seed,
            resume=path.is_file(),
            progress=options.progress,
        )
    return path


class _Writer:
    """Writes build.json (atomically) from the plan's current state."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.audit = plan.previous.get("audit")

    def write(self) -> Path:
        plan = self.plan
        cells = dict(plan.previous.get("cells", {}))  # cells not in this plan stay recorded
        for cell in plan.cells:
            cells[cell.name] = cell.record()
        document = {
            "format_version": FORMAT_VERSION,
            "model": {
                "ref": plan.options.model,
                "random_init": plan.options.random_init,
                "seed": plan.options.seed,
                "checkpoint": plan.checkpoint,
            },
            "contract": plan.options.contract,
            "calibration": plan.calibration,
            "cells": cells,
            "audit": self.audit,
            "edge_convnext": _version(),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return atomic.write_text(
            Path(plan.options.out) / BUILD_JSON, json.dumps(document, indent=2) + "\n"
        )


def _version() -> str:
    try:
        return metadata.version("edge-convnext")
    except metadata.PackageNotFoundError:
        return "unknown"


# --- audit and the report --------------------------------------------------------------------


def _audit(plan: Plan, stages: Stages, state: _Writer) -> Path | None:
    from . import audit
    from .runners import calibration_keys

    options = plan.options
    out = Path(options.out)
    report_dir = out / REPORT_DIR
    ready = [c for c in plan.cells if c.status in ("built", "up to date")]
    audit_folder = _audit_folder(options)
    labelled = options.audit_data is not None
    selection = audit.select_dataset(
        audit_folder, options.layout, None, options.per_class, options.limit, options.seed
    )
    images = [(s.key, s.label, _sample_sha(s)) for s in selection.samples]
    audit_key = _sha(
        json.dumps(
            [
                plan.checkpoint,
                sorted(c.key for c in ready),
                images,
                options.threads,
                [c.name for c in plan.cells if c.status == "failed"],
            ],
            default=str,
        )
    )
    previous = state.audit or {}
    report_json = report_dir / "report.json"
    if (
        not options.force
        and previous.get("key") == audit_key
        and report_json.is_file()
        and (report_dir / "report.md").is_file()
    ):
        started = stages.start("audit: up to date")
        stages.finish(f"kept {report_json}", started)
        return report_json
    started = stages.start(f"audit {len(ready)} artifacts + fp32 reference on {len(images)} images")
    runners = []
    for cell in ready:
        try:
            runners.append(targets.get(cell.target).load(out / cell.artifact, options.threads))
        except Exception as error:
            cell.status, cell.error = "failed", f"load: {_error_text(error)}"
    reference = _reference_runner(options)
    exclude = sorted({key for runner in runners for key in calibration_keys(runner)})
    audit.run(
        runners,
        audit_folder,
        layout=options.layout,
        per_class=options.per_class,
        limit=options.limit,
        seed=options.seed,
        reference=reference,
        out=report_dir,
        exclude=exclude,
        progress=options.progress,
    )
    _write_ship_report(plan, report_dir, labelled, reference.name)
    state.audit = {
        "key": audit_key,
        "report": str(report_json.relative_to(out)),
        "data": str(audit_folder),
        "labelled": labelled,
        "excluded_calibration_images": len(exclude),
    }
    stages.finish(f"report in {report_dir}/", started)
    return report_json


def _sample_sha(sample) -> str:
    try:
        return hashlib.sha256(sample.read_bytes()).hexdigest()
    except EdgeConvnextError:
        return "unreadable"


def _reference_runner(options: Options):
    from . import models
    from .runners import TorchRunner

    return TorchRunner(
        models.load(options.model, random=options.random_init, seed=options.seed),
        threads=options.threads,
    )


def ship_rows(plan: Plan, report: dict, labelled: bool) -> list[dict]:
    """One row per cell (built, failed or refused), with the audit's numbers where it has them."""
    out = Path(plan.options.out)
    by_path = {Path(a["artifact"]).resolve(): a for a in report.get("artifacts", [])}
    rows = []
    for cell in plan.cells:
        entry = by_path.get((out / cell.artifact).resolve()) if cell.artifact else None
        row = {
            "target": cell.target,
            "folder": cell.artifact.split("/")[0] if cell.artifact else "",
            "recipe": cell.recipe,
            "status": "built" if cell.status == "up to date" else cell.status,
            "file": Path(cell.artifact).name if cell.status not in ("refused",) else "",
            "size_mb": entry["size_mb"] if entry else None,
            "latency_p50_ms": (entry["latency_ms"] or {}).get("p50") if entry else None,
            "agreement_top1": entry["agreement_top1"] if entry else None,
            "snr_db": entry["snr_db"] if entry else None,
            "cosine": entry["cosine_mean"] if entry else None,
            "top1": entry["top1"] if entry and labelled else None,
            "note": (entry or {}).get("note") or cell.reason
            if cell.status == "refused"
            else (cell.error.splitlines()[-1] if cell.error else (entry or {}).get("note")),
            "ship": False,
        }
        rows.append(row)
    for target in dict.fromkeys(r["target"] for r in rows):
        good = [
            r
            for r in rows
            if r["target"] == target and r["size_mb"] and (r["snr_db"] or 0) >= SHIP_SNR_DB
        ]
        if good:
            min(good, key=lambda r: r["size_mb"])["ship"] = True
    return rows


def ship_markdown(rows: list[dict], reference: str, labelled: bool) -> list[str]:
    """The report's first table: which file should I ship."""
    header = "| ship | folder | file | recipe | MB | ms (p50) | agreement | SNR dB | cosine |"
    rule = "|---|---|---|---|---:|---:|---:|---:|---:|"
    if labelled:
        header += " top-1 (95% CI) |"
        rule += "---:|"
    lines = [
        "# Which file should I ship",
        "",
        f"Against the fp32 PyTorch reference ({reference}), on the audit images the artifacts "
        f"were not calibrated on. Ship = the smallest file per target with SNR >= "
        f"{SHIP_SNR_DB:.0f} dB.",
        "",
        header,
        rule,
    ]
    for r in rows:
        if r["status"] != "built":
            why = r["note"] or ""
            lines.append(
                f"| | {r['folder']} | {r['target']} x {r['recipe']}: **{r['status']}** "
                f"({why}) | {r['recipe']} | | | | | |" + (" |" if labelled else "")
            )
            continue
        cells = [
            "**ship**" if r["ship"] else "",
            r["folder"],
            f"`{r['file']}`",
            r["recipe"],
            _fmt(r["size_mb"], "{:.1f}"),
            _fmt(r["latency_p50_ms"], "{:.1f}"),
            _fmt(r["agreement_top1"], "{:.1%}"),
            _fmt(r["snr_db"], "{:.1f}"),
            _fmt(r["cosine"], "{:.5f}"),
        ]
        if labelled:
            top1 = r["top1"]
            cells.append(
                f"{top1['value']:.1%} ({top1['ci95'][0]:.1%}-{top1['ci95'][1]:.1%})" if top1 else ""
            )
        lines.append("| " + " | ".join(cells) + " |")
    if not labelled:
        lines += [
            "",
            "_The audit images carry no labels (the generated offline sample), so "
            "there is no top-1; agreement and SNR compare with fp32._",
        ]
    return lines


def _fmt(value, pattern: str) -> str:
    return "" if value is None else pattern.format(value)


def _write_ship_report(plan: Plan, report_dir: Path, labelled: bool, reference: str) -> None:
    report_json = report_dir / "report.json"
    report = json.loads(report_json.read_text())
    rows = ship_rows(plan, report, labelled)
    report = {"ship": rows, **{k: v for k, v in report.items() if k != "ship"}}
    atomic.write_text(report_json, json.dumps(report, indent=2) + "\n")
    markdown = (report_dir / "report.md").read_text()
    if markdown.startswith("# Which file should I ship"):
        markdown = markdown[markdown.index("# Accuracy audit") :]
    text = "\n".join(ship_markdown(rows, reference, labelled)) + "\n\n" + markdown
    atomic.write_text(report_dir / "report.md", text)


def summary(report_json: Path) -> str:
    """The ship table of a build's report, as printed at the end of a build."""
    markdown = (report_json.parent / "report.md").read_text()
    head = markdown.split("# Accuracy audit")[0].strip()
    return head
