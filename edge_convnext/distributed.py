"""Audits on a Ray cluster (``edge-convnext audit --ray [ADDRESS]``). Torch-free; Ray is lazy.

The driver selects the images exactly as a single-process audit does and cuts them into shards
(:class:`~edge_convnext.audit_parts.Shard`). Every node of the cluster says which runtimes it has:
those it advertises as custom resources (``ray start --resources
'{"edge_convnext_coreml": 1}'`` on a Mac), or else those it can import. One actor per runtime per
node opens its runners once and scores the shards it is given with
:func:`edge_convnext.audit.run_part`, returning the part's files as bytes; the driver writes them
into ``OUT/parts/``, joins the runtimes' parts of each shard side by side
(:func:`~edge_convnext.audit_parts.join`: every metric, the comparisons with the reference
included, is computed from the joined chunks) and merges the shards into the report a
single-process audit writes (:func:`edge_convnext.audit.merge`).

A cluster does not share a disk: artifacts (with their sidecars) go to the actors as bytes through
Ray's object store, once per artifact, and so do each shard's image bytes, with the task; an actor
on the driver's own node reads both by path instead. A shard whose actor dies is given to a fresh
actor once, then recorded as failed; finished parts stay on disk, and a rerun with ``resume``
skips them.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import tarfile
import tempfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import EdgeConvnextError, NotFoundError, UsageError, choices

RAY_EXTRA = "pip install 'edge-convnext[ray]'"
RESOURCE_PREFIX = "edge_convnext_"
PYTORCH = "pytorch"
# What a node must import to run a target's artifacts (the first one found is enough).
RUNTIME_MODULES: dict[str, tuple[str, ...]] = {
    "tflite": ("ai_edge_litert", "tflite_runtime"),
    "executorch": ("executorch",),
    "coreml": ("coremltools",),
    "onnx": ("onnxruntime",),
    PYTORCH: ("torch", "transformers"),
}
MAX_ATTEMPTS = 2  # a shard whose actor dies is tried once more, on a fresh actor
PARTS = "parts"


class ClusterError(EdgeConvnextError):
    """The Ray cluster cannot be reached or cannot run what the audit needs (exit 1)."""


def import_ray():
    """The ``ray`` module, or a usage error (exit 2) naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray, which this install lacks: {RAY_EXTRA}") from None
    return ray


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- connecting ----------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A Ray connection this process opened (:func:`connect`); :meth:`close` ends it."""

    ray: Any
    address: str | None
    driver_node: str

    def close(self) -> None:
        """Disconnect (and stop the local Ray this process started)."""
        self.ray.shutdown()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(address: str | None = None, **init_options) -> Cluster:
    """Join the Ray cluster at ``address``, or with ``None`` start a local one on this machine.

    A local Ray gets ``num_cpus`` = :func:`usable_cores`. ``address`` is anything ``ray.init``
    takes: ``HOST:PORT`` of a head node, ``auto`` (the cluster this machine is part of) or
    ``ray://HOST:10001`` (Ray Client).

    Raises:
        UsageError: Ray is not installed. ClusterError: nothing answers at ``address``.
    """
    import logging

    ray = import_ray()
    options = {"include_dashboard": False, "logging_level": logging.WARNING, **init_options}
    options.setdefault("log_to_driver", False)  # runtimes print to stderr; errors come back anyway
    if address is None:
        options.setdefault("num_cpus", usable_cores())
    try:
        ray.init(address=address or "local", **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(
            f"cannot connect to Ray at {address or 'a new local instance'}: {error}"
        ) from None
    return Cluster(ray, address, ray.get_runtime_context().get_node_id())


# --- models --------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """One model of the audit, as the driver knows it without opening its runtime.

    Attributes:
        ref: what the user typed (artifact path, checkpoint dir, Hub id or seed name).
        name: the runner name a single-process audit gives it (``str(Path(ref))`` for files).
        target: the target that runs it, ``pytorch`` for checkpoints.
        path: the file or folder on the driver's disk (absolute), ``None`` for Hub ids and seeds.
        random, seed: ``--random-init`` and its seed, for checkpoints.
        external: the preprocessing of an artifact made elsewhere (no sidecar), else ``None``.
        blob: Ray object ref of the tar of the file (+ sidecar), set for actors on other nodes.
    """

    ref: str
    name: str
    target: str
    path: str | None = None
    random: bool = False
    seed: int = 0
    external: Any = None
    blob: Any = None


def describe_model(ref: str, random: bool = False, seed: int = 0, external=None) -> ModelSpec:
    """A :class:`ModelSpec` for ``ref``: the target from the sidecar (or suffix), no runtime.

    ``external`` (an :class:`~edge_convnext.preprocess.ExternalInput`) is kept only for an
    artifact without a sidecar, as :func:`edge_convnext.runners.open_runner` uses it.
    """
    from . import targets
    from .manifest import manifest_path
    from .runners import ONNX_SUFFIX
    from .seeds import find_seed

    if not random and Path(ref).suffix.lower() == ONNX_SUFFIX:
        target_name = "onnx"
    else:
        found = None if random else targets.for_artifact(ref)
        target_name = found.name if found is not None else None
    if target_name is not None:
        path = Path(ref)
        if not path.exists():
            raise NotFoundError(f"{ref}: no such artifact")
        made_elsewhere = target_name == "onnx" or not manifest_path(path).exists()
        return ModelSpec(
            ref,
            str(path),
            target_name,
            str(path.absolute()),
            external=external if made_elsewhere else None,
        )
    if random:
        known = find_seed(ref)
        if known is None:  # refused here as models.random_init would, before any node starts
            raise UsageError(f"--random-init needs a seed model, got {ref!r}")
        return ModelSpec(ref, f"random-init:{known.name}:seed={seed}", PYTORCH, None, True, seed)
    local = Path(ref).expanduser()
    if local.is_dir():
        return ModelSpec(ref, str(local), PYTORCH, str(local.absolute()))
    return ModelSpec(ref, ref, PYTORCH)


def calibration_keys(spec: ModelSpec) -> list[str]:
    """Keys of the images an artifact was calibrated on (its sidecar), never to be scored."""
    from . import manifest

    if spec.path is None or not manifest.manifest_path(Path(spec.path)).exists():
        return []
    quantization = manifest.read(Path(spec.path)).quantization
    if quantization is None or quantization.calibration is None:
        return []
    return list(quantization.calibration.keys)


def pack(path: str | os.PathLike) -> bytes:
    """A tar of ``path`` (file or folder) and its sidecar ``<path>.json`` when there is one."""
    from .manifest import manifest_path

    path = Path(path)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(path, arcname=path.name)
        sidecar = manifest_path(path)
        if sidecar.is_file():
            archive.add(sidecar, arcname=sidecar.name)
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> None:
    """Extract a :func:`pack` tar into ``folder`` (plain files and folders only)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(folder, filter="data")


# --- images --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShippedImage:
    """A sample's encoded bytes read on the driver (or the error reading them), as a ``reader``."""

    data: bytes | None = None
    error: str | None = None

    def __call__(self) -> bytes:
        from .errors import ImageError

        if self.data is None:
            raise ImageError(self.error or "unreadable")
        return self.data


def ship_samples(samples, by_path: bool) -> list:
    """``samples`` as an actor can read them: absolute paths (same node), or bytes (any node).

    Samples without a file (parquet rows) always travel as bytes.
    """
    from .errors import ImageError

    shipped = []
    for sample in samples:
        if by_path and sample.path is not None:
            shipped.append(replace(sample, path=Path(sample.path).absolute()))
            continue
        try:
            reader = ShippedImage(sample.read_bytes())
        except ImageError as error:
            reader = ShippedImage(error=str(error))
        shipped.append(replace(sample, path=None, reader=reader))
    return shipped


# --- the actor -----------------------------------------------------------------------------------


@dataclass
class ScoredPart:
    """What an actor returns for one shard: the part's files, or why it could not score."""

    files: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None
    load_failed: bool = False  # the runners did not open: every shard of this runtime fails


class ShardScorer:
    """Runs on a node: opens the runners of one runtime once, then scores shards into parts.

    Made a Ray actor by the driver (``ray.remote(ShardScorer)``); a plain class otherwise. A
    model that cannot be opened is not an exception here (that would read as a dead actor):
    every :meth:`score` call returns the reason instead.
    """

    def __init__(self, specs: Sequence[ModelSpec], threads: int | None, by_path: bool):
        from .runners import open_runner

        self.folder = Path(tempfile.mkdtemp(prefix="edge-convnext-ray-"))
        self.runners = []
        self.load_error = None
        try:
            for i, spec in enumerate(specs):
                ref = spec.path if by_path and spec.path else spec.ref
                if spec.blob is not None and not by_path:
                    ref = str(self._materialize(spec, i))
                runner = open_runner(
                    ref, random=spec.random, seed=spec.seed, threads=threads, external=spec.external
                )
                runner.name = spec.name  # the driver's name, wherever the file landed here
                self.runners.append(runner)
        except EdgeConvnextError as error:  # said with the driver's path, whichever node
            message = str(error).replace(str(ref), spec.name)
            self.load_error = message if spec.name in message else f"{spec.name}: {message}"

    def _materialize(self, spec: ModelSpec, index: int) -> Path:
        import ray

        folder = self.folder / f"model-{index}"
        folder.mkdir()
        data = spec.blob if isinstance(spec.blob, bytes) else ray.get(spec.blob)
        unpack(data, folder)
        return folder / Path(spec.path).name

    def node(self) -> str:
        """The Ray node id this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def score(self, samples: Sequence, selection, reference, workers: int | None) -> ScoredPart:
        """Score ``samples`` (one shard) with every runner into a part; its files as bytes."""
        from . import audit

        if self.load_error is not None:
            return ScoredPart(error=self.load_error, load_failed=True)
        part = Path(tempfile.mkdtemp(prefix="part-", dir=self.folder))
        try:
            audit.run_part(
                self.runners,
                samples,
                part,
                reference=reference,
                progress=False,
                selection=selection,
                workers=workers,
            )
            files = {
                p.relative_to(part).as_posix(): p.read_bytes()
                for p in part.rglob("*")
                if p.is_file()
            }
            return ScoredPart(files)
        except EdgeConvnextError as error:
            return ScoredPart(error=str(error))
        finally:
            shutil.rmtree(part, ignore_errors=True)

    def __del__(self):
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)


# --- nodes and actors ----------------------------------------------------------------------------


@dataclass
class Node:
    """A live node: its id, address, CPUs and the runtimes it runs (advertised or importable)."""

    node_id: str
    address: str
    cpus: int
    runtimes: set[str]
    advertised: dict[str, float] = field(default_factory=dict)


def node_runtimes() -> list[str]:
    """The runtimes this machine can import (what a node runs when it advertises none)."""
    return [
        target
        for target, modules in RUNTIME_MODULES.items()
        if any(_importable(m) for m in modules)
    ]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def live_nodes(cluster: Cluster) -> list[Node]:
    """The cluster's live nodes and their runtimes: advertised resources, else a probe task."""
    ray = cluster.ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(node_runtimes)
    nodes, probes = [], {}
    for info in ray.nodes():
        if not info.get("Alive"):
            continue
        resources = info.get("Resources", {})
        advertised = {
            key.removeprefix(RESOURCE_PREFIX): value
            for key, value in resources.items()
            if key.startswith(RESOURCE_PREFIX)
        }
        node = Node(
            info["NodeID"],
            info.get("NodeManagerAddress", "?"),
            int(resources.get("CPU", 1)),
            set(advertised),
            advertised,
        )
        nodes.append(node)
        if not advertised:
            strategy = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
            probes[node.node_id] = probe.options(scheduling_strategy=strategy).remote()
    found = dict(zip(probes, ray.get(list(probes.values())), strict=True))
    for node in nodes:
        node.runtimes |= set(found.get(node.node_id, ()))
    return nodes


@dataclass
class _Slot:
    """One actor: a runtime on a node, and how often it has been replaced."""

    node: Node
    target: str
    actor: Any = None
    replaced: int = 0
    threads: int = 1


@dataclass
class _Task:
    """The part of one shard for one runtime."""

    shard: Any
    target: str
    attempts: int = 0

    @property
    def name(self) -> str:
        return f"{self.shard.index:04d}-of-{self.shard.count:04d}.{self.target}"


# --- the driver ----------------------------------------------------------------------------------

SHARD_IMAGES = 2048  # default shard size: bounds what one task ships and one failure loses


@dataclass
class DistributedRun:
    """What :func:`audit` did on the cluster.

    Attributes:
        parts: ``OUT/parts``, where the parts are kept until the report is written.
        actors: one line per actor (runtime, node, threads).
        shards: how many shards the images were cut into.
        scored: parts scored in this run; resumed: parts found complete on disk.
        failures: one line per part that failed (its actor died twice, a model did not open, a
            runtime error stopped it).
        outcome: the merged report (:class:`~edge_convnext.audit.AuditRun`), ``None`` when a part
            failed (no report is written then: rerun with ``resume`` to score only what is left).
    """

    parts: Path
    actors: list[str]
    shards: int
    scored: int
    resumed: int
    failures: list[str]
    outcome: Any = None

    @property
    def failed(self) -> bool:
        """Exit status 1: a part failed, or the merged audit has problems."""
        return bool(self.failures) or (self.outcome is not None and self.outcome.failed)

    @property
    def problems(self) -> list[str]:
        """One line per failure, for the terminal."""
        return self.failures + (self.outcome.problems if self.outcome is not None else [])


def audit(
    models: Sequence[str],
    data: str | os.PathLike,
    *,
    address: str | None = None,
    shards: int | None = None,
    resume: bool = False,
    threads: int | None = None,
    workers: int | None = None,
    random: bool = False,
    external=None,
    layout: str | None = None,
    labels_file: str | os.PathLike | None = None,
    per_class: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    reference: str | None = None,
    out: str | os.PathLike = Path("audit"),
    manifest: str | os.PathLike | None = None,
    exclude: Sequence[str] = (),
    include_calibration: bool = False,
    progress: bool = True,
    allow_outside: bool = False,
    ship: str = "auto",
    cluster: Cluster | None = None,
) -> DistributedRun:
    """:func:`edge_convnext.audit.audit` of ``models`` with the shards scored on a Ray cluster.

    The report set written to ``out`` is the one a single-process audit of the same models and
    images writes (equal but for timing and paths).

    Args:
        models: artifact paths, checkpoint dirs, Hub ids or (with ``random``) seed names, as
            the ``audit`` command takes them; no runtime is opened on the driver.
        address: the cluster to join (see :func:`connect`); ``None`` starts a local Ray.
        shards: how many shards (default: one per :data:`SHARD_IMAGES` images, at least two
            per actor of the busiest runtime; on resume, as many as the parts on disk).
        resume: keep the complete parts already in ``OUT/parts`` and score only the others.
        threads: runtime threads per actor (default: the node's CPUs shared by its actors).
        workers: decode threads per actor (default: one per core, at most 4).
        external: the preprocessing of artifacts made elsewhere
            (:class:`~edge_convnext.preprocess.ExternalInput`).
        reference: an audited model's name, another model, or ``predictions.npz[#NAME]``
            (default: the first model).
        exclude, include_calibration: images never scored; by default also the images each
            artifact's sidecar says it was calibrated on.
        ship: ``auto`` (bytes to other nodes, paths on the driver's node), ``bytes`` or
            ``path`` (every node mounts the artifacts and the data at the driver's paths).
        cluster: an open :class:`Cluster` to use (kept open); the other arguments are those of
            :func:`edge_convnext.audit.audit`.

    Raises:
        UsageError: Ray missing, bad arguments, ``resume`` over parts of another audit.
        ClusterError: the cluster cannot be reached, or no node runs a needed runtime.
    """
    from . import audit as single

    import_ray()
    if ship not in ("auto", "bytes", "path"):
        raise UsageError(f"ship must be 'auto', 'bytes' or 'path', got {ship!r}")
    if shards is not None and shards < 1:
        raise UsageError(f"--shards must be a positive number, got {shards}")
    specs, reference = _plan_models(models, reference, random, seed, external)
    exclude = list(exclude)
    if not include_calibration:
        exclude += [key for spec in specs for key in calibration_keys(spec)]
    dataset = single.select_dataset(
        data, layout, labels_file, per_class, limit, seed, manifest, exclude, allow_outside
    )
    opened = cluster is None
    cluster = cluster or connect(address)
    try:
        driver = _Driver(cluster, specs, reference, dataset, Path(out), threads, workers, ship)
        return driver.run(shards, resume, progress)
    finally:
        if opened:
            cluster.close()


def _plan_models(
    models: Sequence[str], reference: str | None, random: bool, seed: int, external=None
) -> tuple[list[ModelSpec], str]:
    """The models' specs (an extra reference model first) and the reference to score against:
    a model's name or a ``predictions.npz[#NAME]``."""
    if not models:
        raise UsageError("nothing to audit: give at least one model")
    specs = [describe_model(ref, random, seed, external) for ref in models]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"each model must be audited once; repeated: {choices(duplicates)}")
    if reference is None:
        return specs, names[0]
    by_ref = [s.name for s in specs if reference in (s.ref, s.name)]
    if by_ref:
        return specs, by_ref[0]
    if ".npz" in reference:
        return specs, reference
    extra = describe_model(reference, random, seed, external)
    return [extra, *specs], extra.name


def _load_predictions(reference: str, names: list[str]):
    """The ``predictions.npz[#NAME]`` reference, named as a single-process audit names it."""
    from .results import Predictions

    file, _, artifact = reference.partition("#")
    if not Path(file).is_file():
        raise NotFoundError(f"reference predictions {file}: no such file")
    predictions = Predictions.load(file, artifact or None)
    if predictions.name in names:  # as audit._predictions_row does against every runner name
        predictions = replace(predictions, name=f"{predictions.name} [reference]")
    return predictions


def _shard_name(shard) -> str:
    return f"{shard.index:04d}-of-{shard.count:04d}"


class _Driver:
    """Places the actors, hands out the (shard, runtime) parts, collects, joins and merges."""

    def __init__(self, cluster, specs, reference, dataset, out, threads, workers, ship):
        from .audit_parts import Selection

        self.cluster, self.ray = cluster, cluster.ray
        self.specs, self.dataset = specs, dataset
        self.out, self.parts = out, out / PARTS
        self.threads, self.workers, self.ship = threads, workers, ship
        self.targets = list(dict.fromkeys(spec.target for spec in specs))
        names = [s.name for s in specs]
        self.predictions = None
        if reference not in names:
            self.predictions = _load_predictions(reference, names)
            reference, names = self.predictions.name, [self.predictions.name, *names]
        self.reference, self.names = reference, names
        self.selection_sha256 = Selection.of(dataset).sha256
        self.slots = self._slots(live_nodes(cluster))
        self.blobs: dict[str, Any] = {}
        self.images: dict[tuple[int, bool], Any] = {}
        self.pending: dict[int, int] = {}
        self.failed_shards: set[int] = set()

    # --- placing -----------------------------------------------------------------------------

    def _slots(self, nodes: list[Node]) -> list[_Slot]:
        slots = [
            _Slot(node, target)
            for node in nodes
            for target in self.targets
            if target in node.runtimes
        ]
        missing = [t for t in self.targets if all(s.target != t for s in slots)]
        if missing:
            have = ", ".join(f"{n.address}: {sorted(n.runtimes) or 'none'}" for n in nodes)
            raise ClusterError(
                f"no node of the Ray cluster runs {choices(missing)} ({have}); install the "
                "runtime on a node, or start one that has it with ray start --address HEAD "
                f"--resources '{{\"{RESOURCE_PREFIX}{missing[0]}\": 1}}'"
            )
        return slots

    def _by_path(self, slot: _Slot) -> bool:
        if self.ship == "auto":
            return slot.node.node_id == self.cluster.driver_node
        return self.ship == "path"

    def _start(self, slot: _Slot) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        by_path = self._by_path(slot)
        specs = [self._shipped(s, by_path) for s in self.specs if s.target == slot.target]
        on_node = sum(1 for s in self.slots if s.node is slot.node)
        slot.threads = self.threads or max(1, slot.node.cpus // on_node)
        amount = slot.node.advertised.get(slot.target)
        resources = {RESOURCE_PREFIX + slot.target: min(1.0, amount)} if amount else {}
        actor = self.ray.remote(ShardScorer).options(
            num_cpus=0,
            resources=resources,
            scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node.node_id, soft=False),
            max_restarts=0,
        )
        slot.actor = actor.remote(specs, slot.threads, by_path)

    def _shipped(self, spec: ModelSpec, by_path: bool) -> ModelSpec:
        if by_path or spec.path is None:
            return spec
        if spec.name not in self.blobs:
            self.blobs[spec.name] = self.ray.put(pack(spec.path))
        return replace(spec, blob=self.blobs[spec.name])

    def _reference_for(self, target: str):
        """What an actor of ``target`` scores against: the reference if it holds it, else none
        (the rows are compared once the shard's parts are joined)."""
        if self.predictions is not None:
            return self.predictions if target == self.targets[0] else None
        holder = next(s.target for s in self.specs if s.name == self.reference)
        return self.reference if target == holder else None

    # --- parts on disk -----------------------------------------------------------------------

    def _names_of(self, target: str) -> list[str]:
        names = [s.name for s in self.specs if s.target == target]
        if self.predictions is not None and target == self.targets[0]:
            names.insert(0, self.predictions.name)
        return names

    def _part_path(self, task: _Task) -> Path:
        return self.parts / task.name

    def _joined_path(self, shard) -> Path:
        return self.parts / _shard_name(shard)

    def _is_ours(self, path: Path, shard, names: list[str]) -> bool:
        """Whether ``path`` is a complete part of this audit's ``shard`` with rows ``names``."""
        from . import audit_parts

        part = audit_parts.complete_part(path)
        if part is None:
            return False
        selection = part.plan["selection"]
        return (
            selection["sha256"] == self.selection_sha256
            and selection["shard"] == str(shard)
            and [r["name"] for r in part.plan["rows"]] == names
        )

    def _complete(self, task: _Task) -> bool:
        return self._is_ours(self._joined_path(task.shard), task.shard, self.names) or (
            self._is_ours(self._part_path(task), task.shard, self._names_of(task.target))
        )

    def _check_resumable(self) -> int | None:
        """The shard count of the parts on disk (``None`` if none); UsageError if they are of
        another audit (other images or models)."""
        from . import audit_parts

        counts = set()
        for path in sorted(self.parts.iterdir()) if self.parts.is_dir() else []:
            plan = audit_parts.read_plan(path)
            if plan is None:
                continue
            selection = plan["selection"]
            names = {r["name"] for r in plan["rows"]}
            if selection["sha256"] != self.selection_sha256 or not names <= set(self.names):
                raise UsageError(
                    f"--resume: {path} is a part of another audit (other images or models); "
                    "drop --resume to start over, or choose another --out"
                )
            counts.add(int(str(selection["shard"]).split("/")[1]))
        if len(counts) > 1:
            raise UsageError(f"--resume: {self.parts} holds parts of several shard counts")
        return counts.pop() if counts else None

    def _write_part(self, task: _Task, files: dict[str, bytes]) -> None:
        from . import atomic

        with atomic.atomic_path(self._part_path(task)) as staged:
            for relative, data in files.items():
                if Path(relative).is_absolute() or ".." in Path(relative).parts:
                    raise ClusterError(f"an actor returned a file outside its part: {relative}")
                path = staged / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)

    def _join(self, shard) -> None:
        """Join the runtimes' parts of ``shard`` into one part (then drop them)."""
        from . import audit_parts

        joined = self._joined_path(shard)
        if self._is_ours(joined, shard, self.names):
            return
        paths = [self._part_path(_Task(shard, t)) for t in self.targets]
        parts = [audit_parts.load_part(path) for path in paths]
        audit_parts.join(parts, self.names, self.reference, joined)
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)

    # --- scheduling --------------------------------------------------------------------------

    def run(self, shards: int | None, resume: bool, progress: bool) -> DistributedRun:
        from . import audit as single
        from .audit_parts import Shard
        from .progress import bar

        on_disk = self._check_resumable() if resume else None
        if shards is None:
            busiest = max(sum(1 for s in self.slots if s.target == t) for t in self.targets)
            shards = on_disk or max(2 * busiest, -(-len(self.dataset.samples) // SHARD_IMAGES))
        elif on_disk is not None and shards != on_disk:
            raise UsageError(
                f"--resume: the parts in {self.parts} are of {on_disk} shards, not {shards}; "
                f"pass --shards {on_disk} or leave it out"
            )
        count = max(1, min(shards, len(self.dataset.samples)))
        tasks = [_Task(Shard(k, count), t) for k in range(1, count + 1) for t in self.targets]
        if not resume:
            shutil.rmtree(self.parts, ignore_errors=True)
        self.parts.mkdir(parents=True, exist_ok=True)
        todo = [t for t in tasks if not self._complete(t)]
        self.pending = {k: sum(1 for t in todo if t.shard.index == k) for k in range(1, count + 1)}
        for slot in self.slots:
            self._start(slot)
        failures: list[tuple[_Task, str]] = []
        with bar(enabled=progress, total=len(tasks), unit="part", desc="ray") as progress_bar:
            progress_bar.update(len(tasks) - len(todo))
            self._schedule(todo, failures, progress_bar)
        run = DistributedRun(
            self.parts,
            [
                f"{s.target} on node {s.node.node_id[:8]} at {s.node.address} ({s.threads} threads)"
                for s in self.slots
            ],
            count,
            len(todo) - len(failures),
            len(tasks) - len(todo),
            _grouped(failures),
        )
        if not failures:
            shards_ = [Shard(k, count) for k in range(1, count + 1)]
            for shard in shards_:
                self._join(shard)  # those whose every part was already on disk
            (self.out / "report.json").unlink(missing_ok=True)
            joined = [self._joined_path(shard) for shard in shards_]
            run.outcome = single.merge(joined, self.out)
            shutil.rmtree(self.parts, ignore_errors=True)
        return run

    def _schedule(self, todo: list[_Task], failures: list, progress_bar) -> None:
        """Keep every actor busy with one part at a time until every part is done or failed."""
        queues = {t: deque(task for task in todo if task.target == t) for t in self.targets}
        idle = list(self.slots)
        running: dict[Any, tuple[_Slot, _Task]] = {}

        def fail(task: _Task, message: str) -> None:
            failures.append((task, message))
            self.failed_shards.add(task.shard.index)
            self._done(task)

        while True:
            for slot in [s for s in idle if queues[s.target]]:
                task = queues[slot.target].popleft()
                running[self._submit(slot, task)] = (slot, task)
                idle.remove(slot)
            if not running:
                return
            [ready], _ = self.ray.wait(list(running), num_returns=1)
            slot, task = running.pop(ready)
            kind, message = self._collect(ready, task)
            if kind == "ok":
                progress_bar.update(1)
                idle.append(slot)
                continue
            task.attempts += 1
            if kind == "died" and task.attempts < MAX_ATTEMPTS:
                queues[task.target].appendleft(task)
            else:
                fail(task, message)
            if kind != "died" or self._replace(slot):
                idle.append(slot)
            alive = idle + [s for s, _ in running.values()]
            if kind == "load" or all(s.target != task.target for s in alive):
                reason = message if kind == "load" else f"no live {task.target} actor left"
                while queues[task.target]:
                    fail(queues[task.target].popleft(), reason)

    def _submit(self, slot: _Slot, task: _Task):
        from .audit_parts import Selection

        by_path = self._by_path(slot)
        key = (task.shard.index, by_path)
        if key not in self.images:  # once per shard, for every runtime's actor
            samples = task.shard.select(self.dataset.samples)
            self.images[key] = self.ray.put(ship_samples(samples, by_path))
        selection = Selection.of(self.dataset, task.shard)
        reference = self._reference_for(task.target)
        return slot.actor.score.remote(self.images[key], selection, reference, self.workers)

    def _collect(self, ready, task: _Task) -> tuple[str, str | None]:
        """``("ok" | "died" | "load" | "error", message)`` of a finished part."""
        exceptions = self.ray.exceptions
        try:
            scored = self.ray.get(ready)
        except exceptions.RayActorError as error:
            if error.actor_init_failed:
                return "load", _first_line(error)
            return "died", "its actor died (" + _first_line(error) + ")"
        except exceptions.RayTaskError as error:
            return "error", _first_line(error.cause if error.cause is not None else error)
        if scored.error is not None:
            return ("load" if scored.load_failed else "error"), scored.error
        self._write_part(task, scored.files)
        self._done(task)
        return "ok", None

    def _done(self, task: _Task) -> None:
        """One part of ``task.shard`` finished or failed; the last one joins the shard."""
        index = task.shard.index
        self.pending[index] -= 1
        if self.pending[index]:
            return
        for by_path in (True, False):
            self.images.pop((index, by_path), None)  # the object store may free the bytes
        if index not in self.failed_shards:
            self._join(task.shard)

    def _replace(self, slot: _Slot) -> bool:
        """Start a fresh actor for a dead one, once; False when it was replaced already."""
        if slot.replaced >= MAX_ATTEMPTS - 1:
            return False
        slot.replaced += 1
        self._start(slot)
        return True


def _grouped(failures: list[tuple[_Task, str]]) -> list[str]:
    """One line per runtime and reason, listing its shards (a model that does not open fails
    every shard of its runtime the same way)."""
    shards: dict[tuple[str, str], list] = {}
    for task, message in failures:
        shards.setdefault((task.target, message), []).append(task.shard)
    lines = []
    for (target, message), found in shards.items():
        listed = ", ".join(str(shard) for shard in sorted(found, key=lambda shard: shard.index))
        lines.append(f"{target}: shard{'s' if len(found) > 1 else ''} {listed} failed: {message}")
    return lines


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
