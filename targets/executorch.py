"""ExecuTorch target: a ``.pte`` program with the XNNPACK delegate, run by ExecuTorch's runtime.

Flow (ExecuTorch's documented XNNPACK lowering, docs "XNNPACK Backend"):
``torch.export.export(module, (example,))`` ->
``executorch.exir.to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])`` ->
``.to_executorch()`` -> ``.buffer`` written atomically. What the XNNPACK partitioner does not take
stays in the program as calls to ExecuTorch's CPU kernels between delegate calls: on the portable
graph every ``native_layer_norm`` and the head's ``mean`` (no ``keepdim``), in V2 also GRN's
``sum`` and ``mean``. The pipeline therefore lowers the graph after ``targets.XNNPACK_REWRITES``,
which XNNPACK takes whole. :func:`describe` reports both sides from the ``.pte`` alone.

Runner: ``executorch.runtime.Runtime.get().load_program(path).load_method("forward")`` once, then
``method.execute([tensor])`` per image. The Python runtime (pybindings) takes and returns
``torch.Tensor`` only (numpy arrays are rejected) and loads libtorch on import, so running a
``.pte`` from Python needs torch installed; the torch-free device path is the ``.tflite`` target.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import signal
import sys
import time
import warnings
import weakref
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_convnext import contracts
from edge_convnext import manifest as manifests
from edge_convnext.errors import (
    ArtifactError,
    EdgeConvnextError,
    NotFoundError,
    UnsupportedError,
    UsageError,
)

from .base import NO_QUANTIZATION, XNNPACK_REWRITES, Quantization, Target
from .runner import ArtifactRunner

if TYPE_CHECKING:
    from torch.export import ExportedProgram

    from ..contracts import InputContract
    from ..models import LoadedModel
    from ..preprocess import ExternalInput
    from ..quantize.dynamic import DynamicScheme
    from ..quantize.ptq import PT2EScheme
    from ..quantize.recipes import Recipe

NAME = "executorch"
SUFFIX = ".pte"
NOTE = (
    "ExecuTorch's Python runtime exchanges torch tensors and loads libtorch: running a .pte from "
    "Python needs torch installed (pip install 'edge-convnext[executorch]')"
)
METHOD = "forward"
FLOW = (
    "torch.export.export -> executorch.exir.to_edge_transform_and_lower("
    "partitioner=[XnnpackPartitioner()]) -> to_executorch"
)
INSTALL_HINT = "pip install 'edge-convnext[executorch]' (executorch==1.5.1 and torch)"

# Runners whose methods are loaded. XNNPACK delegates capture the process-wide ExecuTorch thread
# pool when a method loads, and resizing the pool destroys it, so it is only resized while none
# is open.
_OPEN_RUNNERS: weakref.WeakSet = weakref.WeakSet()
_DEFAULT_THREADS: list[int] = []  # the runtime's own pool size, recorded before any resize


# --------------------------------------------------------------------------- export (torch side)


def export(
    model: LoadedModel,
    recipe: Recipe,
    out_dir: Path,
    contract: InputContract | str = contracts.DEFAULT,
    quantization: Quantization = NO_QUANTIZATION,
    *,
    progress: bool = False,
) -> Path:
    """Lower ``model`` to a ``.pte`` with the XNNPACK delegate; write it and its sidecar manifest.

    Args:
        model: the :class:`edge_convnext.models.LoadedModel` to lower.
        recipe: the :class:`edge_convnext.quantize.recipes.Recipe`: ``fp32``, or a quantized
            recipe whose graph ``quantization.graph`` brings (PT2E int8, or ``w4a8``'s torchao
            dynamic-activation layers).
        out_dir: directory for ``<model>.<recipe>.<contract>.pte`` and its ``.json`` sidecar.
        contract: the input contract (``contracts.APP``: uint8 NHWC; ``FLOAT_NCHW``).
        quantization: for quantized recipes, the quantized graph (from ``quantize.ptq``/``qat``)
            taking ``contract``'s input; it is lowered instead of the float model.
        progress: unused (the lowering shows no progress).

    Returns:
        The artifact path.

    Raises:
        UnsupportedError: the recipe is not supported by this target.
        ArtifactError: XNNPACK cannot run the lowered program.
    """
    from . import lowering

    TARGET.check(recipe)
    contract = contracts.get(contract)
    quantized = quantization.graph
    module = quantized.graph if quantized else lowering.with_contract(model, contract)
    example = lowering.example_input(contract, model.preprocessing)
    start = time.perf_counter()
    buffer, details = _lower(_export_program(module, example))
    _check_runs(buffer, example, where=f"{model.name} {recipe.name} ({contract.name})")
    details["export_seconds"] = round(time.perf_counter() - start, 2)
    return lowering.write_artifact(
        model,
        recipe,
        contract,
        TARGET,
        out_dir,
        lambda path: _write_program(buffer, path),
        details,
        quantization=quantized.record if quantized else None,
    )


def quantization_scheme(
    recipe: Recipe, qat: bool = False, keep_float: tuple[str, ...] | list[str] = ()
) -> PT2EScheme | DynamicScheme:
    """XNNPACK's PT2E quantizer for ``recipe``: per-channel symmetric int8 weights, per-tensor
    int8 activations (the configuration XNNPACK's int8 kernels take) observed with the recipe's
    ``observer``, on the recipe's ``layers`` minus ``keep_float``.

    A recipe with dynamic activations (``w4a8``) gets a ``quantize.dynamic.DynamicScheme``
    instead: torchao's int4 group-wise / int8 per-channel weights with per-token int8
    activations, which the partitioner lowers to XNNPACK's ``qd8`` GEMMs; ``keep_float`` layers
    get the recipe's ``fallback_weights``.
    """
    if recipe.dynamic_activations:
        from edge_convnext.quantize.dynamic import DynamicScheme as Dynamic  # runtime import

        if qat:
            raise UnsupportedError(f"recipe {recipe.name!r}: no QAT for dynamic activations yet")
        return Dynamic(recipe, tuple(keep_float))
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    from edge_convnext.quantize.ptq import PT2EScheme as Scheme  # runtime import
    from edge_convnext.quantize.ptq import int8_config, layer_filter

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    config = int8_config(config, recipe, NAME, qat=qat)
    quantizer = XNNPACKQuantizer().set_global(config)
    quantizer.set_filter_function(layer_filter(recipe.layers, keep_float))
    return Scheme(quantizer, fold_quantize=True)


def _export_program(module, example) -> ExportedProgram:
    """``torch.export`` of ``module`` at batch 1 (static shapes, as XNNPACK plans memory)."""
    import torch

    with torch.no_grad():
        return torch.export.export(module, (example,))


def _lower(program: ExportedProgram) -> tuple[bytes, dict]:
    """Lower an ``ExportedProgram`` (float or PT2E-quantized) to XNNPACK: ``.pte`` bytes + facts.

    The facts are the manifest's ``details``: the flow and the export-time delegation summary
    (``executorch.devtools.backend_debug.get_delegation_info`` on the lowered edge graph).
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with warnings.catch_warnings():
        # torch 2.13 deep-copies exported graphs through copyreg, which trips torch's own
        # LeafSpec deprecation once per copy: noise a user cannot act on.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        delegation = _delegation_summary(edge.exported_program().graph_module)
        executorch_program = edge.to_executorch()
    details = {
        "converter": {"flow": FLOW, "partitioner": "XnnpackPartitioner()", "method": METHOD},
        "delegation": delegation,
    }
    return bytes(executorch_program.buffer), details


def _check_runs(buffer: bytes, example, where: str) -> None:
    """Run the lowered program once, so a file XNNPACK cannot execute is never written.

    XNNPACK validates shapes and quantization parameters only when it runs the program (e.g.
    int8 linears on the portable graph's permuted 4-D tensors fail there).
    """
    from executorch.extension.pybindings import portable_lib

    try:
        portable_lib._load_for_executorch_from_buffer(buffer).forward((example,))
    except RuntimeError as error:
        raise ArtifactError(
            f"ExecuTorch cannot run the lowered {where} ({error}); nothing was written. The "
            "target's own rewrites (no --rewrites) lower every supported recipe."
        ) from None


def _delegation_summary(graph_module) -> dict:
    """Delegated subgraphs and, per edge op, how many nodes XNNPACK took and how many it left."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    by_op = {
        op: {"delegated": row.delegated, "not_delegated": row.non_delegated}
        for op, row in sorted(info.delegation_by_operator.items())
        if op != "getitem"  # tuple unpacking of multi-output ops, not compute
    }
    left = {op: counts["not_delegated"] for op, counts in by_op.items() if counts["not_delegated"]}
    return {
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": sum(row["delegated"] for row in by_op.values()),
        "not_delegated_nodes": sum(row["not_delegated"] for row in by_op.values()),
        "not_delegated_ops": left,
        "by_op": by_op,
    }


def _write_program(buffer: bytes, path: Path) -> None:
    Path(path).write_bytes(buffer)


# --------------------------------------------------------------------------- load (device side)


class ExecuTorchRunner(ArtifactRunner):
    """Runs a ``.pte`` in ExecuTorch's runtime; the program and method are loaded once.

    Attributes:
        threads: size of ExecuTorch's (process-wide) thread pool this runner runs with.
    """

    target = NAME

    def __init__(
        self, path: str | Path, threads: int | None = None, external: ExternalInput | None = None
    ):
        super().__init__(path, external)
        runtime, self._torch = _import_runtime()
        self.threads = _size_thread_pool(threads)
        if threads is not None and self.threads != threads:
            self.note = (
                f"ExecuTorch's thread pool is process-wide and another open .pte runner holds it "
                f"at {self.threads} threads; running with {self.threads}, not {threads}"
            )
        check_header(self.path)
        _probe_load(runtime, self.path)
        try:
            self.program = runtime.load_program(self.path)
            self.method = self.program.load_method(METHOD)
        except RuntimeError as error:
            raise ArtifactError(
                f"{self.path}: ExecuTorch cannot load method {METHOD!r} ({error}); expected a "
                "program written by `edge-convnext export --target executorch`"
            ) from None
        _OPEN_RUNNERS.add(self)
        if external is not None:
            self._input_shape, self._input_dtype = self._external_io()
            return
        self._input_shape = tuple(self.manifest.input["shape"])
        self._input_dtype = np.dtype(self.manifest.input["dtype"])

    def _external_io(self) -> tuple[tuple[int, ...], np.dtype]:
        """Input shape and dtype from the program's method metadata; sets the contract."""
        meta = self.program.metadata(METHOD)
        if meta.num_inputs() != 1 or meta.num_outputs() != 1:
            raise ArtifactError(
                f"{self.path}: method {METHOD!r} has {meta.num_inputs()} inputs and "
                f"{meta.num_outputs()} outputs; expected 1 and 1"
            )
        tensor = meta.input_tensor_meta(0)
        dtype = _SCALAR_TYPES.get(int(tensor.dtype()))
        if dtype is None:
            raise ArtifactError(f"{self.path}: input dtype code {tensor.dtype()} not supported")
        self.contract = self.external_contract(tensor.sizes(), dtype)
        self.check_classes(int(np.prod(meta.output_tensor_meta(0).sizes())))
        shape = tuple(self.contract.shape(self.preprocessing.crop_size))
        return shape, np.dtype(self.contract.dtype)

    def run_contract_input(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape != self._input_shape or batch.dtype != self._input_dtype:
            raise ArtifactError(
                f"{self.path.name}: expected input {self._input_dtype} {list(self._input_shape)} "
                f"(contract {self.contract.name!r}), got {batch.dtype} {list(batch.shape)}"
            )
        pixels = self._torch.from_numpy(np.ascontiguousarray(batch))
        (logits,) = self.method.execute([pixels])  # outputs are cloned: safe to keep
        return logits.numpy()


# ExecuTorch ScalarType codes (c10's numbering) of the input dtypes an external program may take.
_SCALAR_TYPES = {0: np.dtype(np.uint8), 1: np.dtype(np.int8), 6: np.dtype(np.float32)}


def load(
    path: Path, threads: int | None = None, external: ExternalInput | None = None
) -> ExecuTorchRunner:
    """A runner for the ``.pte`` at ``path``.

    Args:
        path: the artifact; its sidecar manifest must sit beside it, unless ``external`` gives
            the preprocessing of a program made elsewhere (its input dtype and shape are read
            from the program's method metadata).
        threads: XNNPACK thread-pool size (default: the runtime's, one per processor). The pool
            is process-wide: it is resized only while no other ``.pte`` runner is open.

    Raises:
        ArtifactError: ExecuTorch is not installed, or the file or sidecar is not usable.
    """
    return ExecuTorchRunner(path, threads, external)


# ExecuTorch programs are flatbuffers with file identifier "ET" + two digits at offset 4
# (executorch/exir/_serialize/_program.py: _program_flatbuffer_to_json / _insert_flatbuffer_header).
_MAGIC = re.compile(rb"ET[0-9]{2}")
_MIN_PROGRAM_BYTES = 64
PROBE_TIMEOUT_S = 120.0


def check_header(path: Path) -> None:
    """ArtifactError unless ``path`` is a regular file that starts like an ExecuTorch program
    (flatbuffer identifier ``ET##`` at offset 4), checked before any byte reaches the runtime."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: not a file; expected an ExecuTorch .pte program")
    size = path.stat().st_size
    if size < _MIN_PROGRAM_BYTES:
        raise ArtifactError(
            f"{path}: {size} bytes, too small for an ExecuTorch .pte program (empty or truncated)"
        )
    with path.open("rb") as handle:
        head = handle.read(8)
    if not _MAGIC.fullmatch(head[4:8]):
        raise ArtifactError(
            f"{path}: not an ExecuTorch .pte program (no 'ET##' flatbuffer identifier at "
            f"offset 4, found {head[4:8]!r}); expected a file written by "
            "`edge-convnext export --target executorch`"
        )


_PROBED: dict[tuple, None] = {}


def _probe_load(runtime, path: Path) -> None:
    """Load ``path`` once in a forked child first: ExecuTorch's C++ loader aborts the whole
    process (SIGABRT) on some damaged programs, which no ``except`` can catch; the child dies
    instead and this raises ArtifactError, so the rest of the run survives.

    A fork costs ~20 ms (the child shares the parent's imported runtime); a child that does not
    finish in :data:`PROBE_TIMEOUT_S` is killed and the load proceeds in-process. Skipped where
    ``os.fork`` does not exist. Each (file, size, mtime) is probed once per process.
    """
    if not hasattr(os, "fork"):
        return
    info = path.stat()
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
    if key in _PROBED:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    with warnings.catch_warnings():
        # Fork of a threaded process (CPython, and JAX's at-fork hook when JAX is loaded): the
        # child only loads the program and exits, so it never meets the threads' state.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            faulthandler.disable()  # it may write to a copy of the parent's stderr (pytest's)
            runtime.load_program(path).load_method(METHOD)
        except BaseException:
            code = 3
        os._exit(code)
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return  # inconclusive: load in-process as before
        time.sleep(0.005)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        raise ArtifactError(
            f"{path}: ExecuTorch's loader crashed on it ({signal.Signals(-code).name}; caught in "
            "a child process); a damaged .pte program, expected a file written by "
            "`edge-convnext export --target executorch`"
        )
    _PROBED[key] = None  # a Python-level failure (code 3) is reported by the real load below


def _import_runtime():
    """``(Runtime singleton, torch)``; the pybindings need torch (they import it themselves)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental API" notices from the pybindings
            import torch
            from executorch.runtime import Runtime
    except ImportError as error:
        raise ArtifactError(
            f"the ExecuTorch runtime is not installed ({error}); running .pte files needs "
            f"executorch and torch: {INSTALL_HINT}"
        ) from None
    return Runtime.get(), torch


def _size_thread_pool(threads: int | None) -> int:
    """Resize ExecuTorch's thread pool to ``threads`` (None: its default) if safe; its size."""
    from executorch.extension.pybindings import portable_lib

    current = portable_lib._threadpool_get_thread_count()
    if not _DEFAULT_THREADS:
        _DEFAULT_THREADS.append(current)
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    wanted = threads if threads is not None else _DEFAULT_THREADS[0]
    if wanted != current and not len(_OPEN_RUNNERS):
        # "unsafe": methods loaded earlier keep a pointer to the pool this destroys.
        portable_lib._unsafe_reset_threadpool(wanted)
        current = portable_lib._threadpool_get_thread_count()
    return current


# --------------------------------------------------------------------------- describe


def describe(path: Path) -> dict:
    """What is in a ``.pte``, read from the file alone (plus the sidecar's export summary).

    Returns:
        ``delegates`` (delegate blobs per backend), ``delegated_ops`` (XNNPACK graph nodes by type,
        summed over blobs), ``delegated_tensor_types`` (XNNPACK datatypes of weights and
        activations: what numerics the delegate runs), ``not_delegated_ops`` (calls left to
        ExecuTorch's CPU kernels, by operator), per-method counts, and ``export_delegation``
        from the manifest if present.

    Raises:
        NotFoundError: the file is missing. ArtifactError: not an ExecuTorch program.
    """
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"{path}: no such .pte file")
    check_header(path)
    data = path.read_bytes()
    program = _deserialize(path, data)
    methods = {plan.name: _describe_plan(plan) for plan in program.execution_plan}
    kernel_ops = sum((Counter(method["kernel_ops"]) for method in methods.values()), Counter())
    # deserialize_pte_binary moves segment-stored blobs back inline, so every index resolves.
    blobs = [
        (delegate.id, program.backend_delegate_data[delegate.processed.index].data)
        for delegate in _delegates(program)
    ]
    graphs = _xnnpack_graphs(blobs)
    summary = {
        "target": NAME,
        "file": path.name,
        "size_bytes": len(data),
        "methods": methods,
        "delegates": dict(Counter(delegate.id for delegate in _delegates(program))),
        "delegate_calls": sum(m["delegate_calls"] for m in methods.values()),
        "not_delegated_ops": dict(kernel_ops.most_common()),
        "delegated_ops": _xnnpack_node_counts(graphs),
        "delegated_tensor_types": _xnnpack_value_types(graphs),
    }
    with contextlib.suppress(EdgeConvnextError):  # no sidecar: the file alone is described
        summary["export_delegation"] = manifests.read(path).details.get("delegation")
    return summary


def _deserialize(path: Path, data: bytes):
    from executorch.exir._serialize._program import deserialize_pte_binary

    try:
        return deserialize_pte_binary(data).program
    except Exception as error:  # flatbuffer parsing raises assorted types on a foreign file
        raise ArtifactError(f"{path}: not an ExecuTorch .pte program ({error})") from None


def _delegates(program):
    return [delegate for plan in program.execution_plan for delegate in plan.delegates]


def _describe_plan(plan) -> dict:
    """Instruction counts of one method: delegate calls and CPU-kernel calls by operator."""
    kernel_ops: Counter = Counter()
    delegate_calls = 0
    for chain in plan.chains:
        for instruction in chain.instructions:
            kind = type(instruction.instr_args).__name__
            if kind == "DelegateCall":
                delegate_calls += 1
            elif kind == "KernelCall":
                operator = plan.operators[instruction.instr_args.op_index]
                overload = f".{operator.overload}" if operator.overload else ""
                kernel_ops[operator.name + overload] += 1
    return {
        "delegate_calls": delegate_calls,
        "kernel_calls": sum(kernel_ops.values()),
        "kernel_ops": dict(kernel_ops.most_common()),
    }


def _xnnpack_graphs(blobs: list[tuple[str, bytes]]) -> list[dict] | None:
    """The XNNPACK graphs (decoded flatbuffers as JSON objects) of the XNNPACK blobs, or None if
    they cannot be decoded.

    Decodes each blob's flatbuffer with the ``flatc`` and schema ExecuTorch ships (private API,
    hence best-effort).
    """
    import json
    import tempfile

    try:
        import executorch.backends.xnnpack.serialization as xnn_serialization
        from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
        from executorch.exir._serialize._flatbuffer import _flatc_decompile
    except ImportError:
        return None
    schema = Path(next(iter(xnn_serialization.__path__))) / "schema.fbs"
    graphs = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for index, (backend, blob) in enumerate(blobs):
                if backend != "XnnpackBackend":
                    continue
                header = XNNHeader.from_bytes(blob[: XNNHeader.EXPECTED_LENGTH])
                start = header.flatbuffer_offset
                graph = Path(scratch) / f"graph{index}.bin"
                graph.write_bytes(blob[start : start + header.flatbuffer_size])
                _flatc_decompile(scratch, str(schema), str(graph), ["--raw-binary"])
                graphs.append(json.loads(graph.with_suffix(".json").read_text()))
    except Exception:  # noqa: BLE001 - a private format: describe the rest of the file regardless
        return None
    return graphs


def _xnnpack_node_counts(graphs: list[dict] | None) -> dict | None:
    """XNNPACK graph nodes by type over all XNNPACK graphs."""
    if graphs is None:
        return None
    counts = Counter(node["xnode_union_type"] for graph in graphs for node in graph["xnodes"])
    return dict(counts.most_common())


def _xnnpack_value_types(graphs: list[dict] | None) -> dict | None:
    """XNNPACK tensor datatypes over all XNNPACK graphs: ``weights`` (constant tensors, e.g.
    ``xnn_datatype_qbint4``: int4 in groups) and ``activations`` (the rest, e.g.
    ``xnn_datatype_qdint8``: int8 quantized per row at run time)."""
    if graphs is None:
        return None
    kinds: dict[str, Counter] = {"weights": Counter(), "activations": Counter()}
    for graph in graphs:
        for value in graph["xvalues"]:
            tensor = value["xvalue_union"]
            tensor = tensor.get("tensor_value", tensor)  # quantized values wrap a tensor value
            constant = tensor.get("constant_buffer_idx", 0) != 0
            kinds["weights" if constant else "activations"][tensor.get("datatype", "?")] += 1
    return {kind: dict(counts.most_common()) for kind, counts in kinds.items()}


# --------------------------------------------------------------------------- the interface


class ExecuTorch(Target):
    name = NAME
    suffixes = (SUFFIX,)
    bundle_dir = "executorch"  # its folder in a `build` dist/
    recipes = ("fp32", "w8a8", "w8a8-qat", "w4a8")
    rewrites = XNNPACK_REWRITES
    toolchain = "executorch"
    tool_packages = ("executorch", "torchao")
    artifact = "`.pte`"
    converter = "`torch.export` → `to_edge_transform_and_lower(XnnpackPartitioner)`"
    runtime = "`executorch.runtime` (needs torch)"

    # The module's functions are the implementation (same signatures, no ``self``).
    quantization_scheme = staticmethod(quantization_scheme)
    export = staticmethod(export)
    load = staticmethod(load)
    describe = staticmethod(describe)


TARGET = ExecuTorch()
