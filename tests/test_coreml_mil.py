"""The numpy MIL evaluator against PyTorch: op families, fp16 rounding, ConvNeXt, compression."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

ct = pytest.importorskip("coremltools", reason="needs the coreml extra (coremltools)")
torch = pytest.importorskip("torch", reason="needs the torch extra")

from edge_convnext.errors import ArtifactError  # noqa: E402
from edge_convnext.targets.coreml_mil import NOTE, MilEvaluator, erf, erfc  # noqa: E402

nn = torch.nn
F = torch.nn.functional
PRECISIONS = {"fp32": ct.precision.FLOAT32, "fp16": ct.precision.FLOAT16}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def convert(module, example, path: Path, precision="fp32", inputs=None, **kwargs) -> Path:
    """torch.export + ct.convert to an ML Program saved at ``path``."""
    exported = torch.export.export(module.eval(), (example,)).run_decompositions({})
    model = ct.convert(
        exported,
        inputs=inputs or [ct.TensorType(name="x", shape=tuple(example.shape))],
        convert_to="mlprogram",
        minimum_deployment_target=kwargs.pop("target", ct.target.iOS17),
        compute_precision=PRECISIONS[precision],
        **kwargs,
    )
    model.save(str(path))
    return path


def run_torch(module, x) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(x)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def run_mil(path: Path, x) -> list[np.ndarray]:
    evaluator = MilEvaluator.from_mlpackage(path)
    out = evaluator(x=x.numpy())
    return [np.asarray(out[name], dtype=np.float64) for name in evaluator.output_names]


def rel_err(got, want) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ---------------------------------------------------------------------------------------------
# Op families: each tiny module is converted at fp32 and fp16 and checked against torch.
class Elementwise(nn.Module):
    def forward(self, x):
        a = x * 1.5 + 0.25
        b = (a - x) / (x.abs() + 1.0)
        c = torch.sqrt(x.abs() + 0.1) + torch.rsqrt(x * x + 0.5)
        d = torch.pow(x.abs() + 0.5, 1.7) - torch.maximum(x, a)
        return torch.cat([a, b, c, d], dim=1)


class Activations(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(12)
        nn.init.normal_(self.norm.weight, 1.0, 0.5)
        nn.init.normal_(self.norm.bias, 0.0, 0.5)

    def forward(self, x):
        y = self.norm(x * 3.0)
        # gelu(approximate="tanh") is not here: coremltools 9 lowers it from torch.export as EXACT
        acts = [F.gelu(y), F.softmax(y, dim=-1), torch.sigmoid(y), F.relu(y), F.silu(y)]
        acts += [torch.tanh(y)]
        return torch.cat(acts, dim=-1)


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 20)

    def forward(self, x):
        y = self.fc(x)
        return y, torch.matmul(y, y.transpose(-1, -2)), y @ self.fc.weight


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.grouped = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=2)
        self.dilated = nn.Conv2d(12, 6, 3, dilation=2, padding="same", bias=False)
        self.multiplier = nn.Conv2d(6, 12, 3, groups=6)

    def forward(self, x):
        y = self.dw(self.stem(x))
        z = self.dilated(self.grouped(y))
        return y, z, self.multiplier(z)


class Shapes(nn.Module):
    def forward(self, x):  # (2, 3, 8, 10)
        y = x.permute(0, 2, 3, 1).reshape(2, 80, 3)
        means = (y.mean(dim=1), x.sum(dim=(2, 3)), torch.linalg.vector_norm(x, dim=(2, 3)))
        sliced = x[:, 1:, 2:7:2, :].flatten(1)
        z = x[:, :1].squeeze(1).unsqueeze(-1)
        return torch.cat(means, dim=-1), sliced, z, y[:, -1]


OP_FAMILIES = {
    "elementwise": (
        Elementwise,
        (2, 3, 5),
        {"add", "sub", "mul", "real_div", "pow", "sqrt", "rsqrt", "abs", "maximum", "concat"},
    ),
    "activations": (
        Activations,
        (2, 5, 12),
        {"layer_norm", "gelu", "softmax", "sigmoid", "relu", "silu", "tanh"},
    ),
    "linear": (Linear, (2, 7, 12), {"linear", "matmul"}),
    "conv": (Convs, (1, 3, 32, 32), {"conv"}),
    "shapes": (
        Shapes,
        (2, 3, 8, 10),
        {"transpose", "reshape", "reduce_mean", "reduce_sum", "reduce_l2_norm", "slice_by_index"},
    ),
}


@pytest.fixture(scope="module")
def family_packages(tmp_path_factory):
    """Each op family converted at both precisions: {(family, precision): (module, x, path)}."""
    root = tmp_path_factory.mktemp("families")
    built = {}
    for family, (cls, shape, _) in OP_FAMILIES.items():
        torch.manual_seed(0)
        module, x = cls().eval(), torch.randn(*shape)
        for precision in PRECISIONS:
            path = convert(module, x, root / f"{family}_{precision}.mlpackage", precision)
            built[family, precision] = (module, x, path)
    return built


@pytest.mark.parametrize("family", OP_FAMILIES)
def test_op_family_matches_torch(family, family_packages):
    module, x, path32 = family_packages[family, "fp32"]
    _, _, path16 = family_packages[family, "fp16"]
    assert OP_FAMILIES[family][2] <= MilEvaluator.from_mlpackage(path32).op_types
    want = run_torch(module, x)
    got32, got16 = run_mil(path32, x), run_mil(path16, x)
    for w, g32, g16 in zip(want, got32, got16, strict=True):
        assert g32.shape == w.shape
        assert rel_err(g32, w) < 1e-5
        assert rel_err(g16, w) < 1e-2
        # fp16 rounding is really applied: the fp16 program is off by a realistic fp16 amount
        assert 1e-5 < rel_err(g16, g32) < 1e-2


class AddThenSub(nn.Module):
    def forward(self, x):
        return (x + 1e-4) - x


def test_fp16_rounds_every_op_output(tmp_path):
    x = torch.linspace(1.0, 2.0, 16).reshape(1, 16)  # fp16 spacing here is ~1e-3
    module = AddThenSub()
    (got32,) = run_mil(convert(module, x, tmp_path / "fp32.mlpackage", "fp32"), x)
    (got16,) = run_mil(convert(module, x, tmp_path / "fp16.mlpackage", "fp16"), x)
    np.testing.assert_allclose(got32, 1e-4, rtol=1e-2)
    assert np.all(got16 == 0.0)  # x + 1e-4 rounds back to x in fp16


def test_builder_only_ops(tmp_path):
    """Ops torch does not emit here: quantize/dequantize, masked slices, interleave, cast, gelu."""
    from coremltools.converters.mil import Builder as mb  # noqa: N813 - the documented alias

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 6))], opset_version=ct.target.iOS17)
    def prog(x):
        q = mb.quantize(input=x, scale=np.float32(0.05), zero_point=np.int8(3), output_dtype="int8")
        dq = mb.dequantize(input=q, scale=np.float32(0.05), zero_point=np.int8(3))
        s = mb.slice_by_index(
            x=x, begin=[1, 1], end=[0, 5], stride=[1, 2], begin_mask=[True, False],
            end_mask=[True, False], squeeze_mask=[False, False],
        )  # fmt: skip
        inter = mb.concat(values=[x, dq], axis=1, interleave=True)
        as_int = mb.cast(x=mb.mul(x=x, y=10.0), dtype="int32")
        gelu_tanh = mb.gelu(x=x, mode="TANH_APPROXIMATION")
        gelu_sigmoid = mb.gelu(x=x, mode="SIGMOID_APPROXIMATION")
        return dq, s, inter, as_int, gelu_tanh, gelu_sigmoid

    model = ct.convert(
        prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
        compute_precision=ct.precision.FLOAT32,
    )  # fmt: skip
    model.save(str(tmp_path / "builder.mlpackage"))
    evaluator = MilEvaluator.from_mlpackage(tmp_path / "builder.mlpackage")
    x = np.random.default_rng(0).uniform(-3, 3, (2, 6)).astype(np.float32)
    out = evaluator(**{evaluator.input_names[0]: x})
    dq, s, inter, as_int, gelu_tanh, gelu_sigmoid = (out[n] for n in evaluator.output_names)
    want_dq = (np.clip(np.round(x / 0.05) + 3, -128, 127) - 3) * 0.05
    np.testing.assert_allclose(dq, want_dq, atol=1e-6)
    np.testing.assert_array_equal(s, x[:, 1:5:2])
    np.testing.assert_allclose(inter, np.stack([x, want_dq], axis=2).reshape(2, 12), atol=1e-6)
    np.testing.assert_array_equal(as_int, (x * 10).astype(np.int32))
    want_tanh = F.gelu(torch.from_numpy(x), approximate="tanh").numpy()
    np.testing.assert_allclose(gelu_tanh, want_tanh, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gelu_sigmoid, x / (1 + np.exp(-1.702 * x)), rtol=1e-6)


def test_unknown_op_names_op_and_supported_list(tmp_path):
    class Cumsum(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    path = convert(Cumsum(), torch.rand(1, 4), tmp_path / "cumsum.mlpackage")
    with pytest.raises(ArtifactError, match=r"'cumsum'.*supported ops:.*'conv'"):
        MilEvaluator.from_mlpackage(path)


def test_erf_matches_math():
    x = np.concatenate([np.linspace(-6, 6, 2001), [-27.0, -9.0, 0.0, 1e-9, 8.5, 27.0]])
    np.testing.assert_allclose(erf(x), [math.erf(v) for v in x], rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(erfc(x), [math.erfc(v) for v in x], rtol=1e-13, atol=1e-300)


# ---------------------------------------------------------------------------------------------
# Image inputs, classifiers and ConvNeXt end to end.
def test_image_input_bgr_per_channel_bias(tmp_path):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 2, stride=2)
    bias = [-0.5, -0.25, 0.1]  # in the model's (BGR) channel order
    image = ct.ImageType(
        name="image", shape=(1, 3, 8, 8), scale=1 / 255, bias=bias, color_layout=ct.colorlayout.BGR
    )
    path = convert(conv, torch.rand(1, 3, 8, 8), tmp_path / "bgr.mlpackage", inputs=[image])
    evaluator = MilEvaluator.from_mlpackage(path)
    rgb = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    out = evaluator(image=rgb)[evaluator.output_names[0]]
    bgr = torch.from_numpy(rgb[..., ::-1].copy()).permute(0, 3, 1, 2).float()
    (want,) = run_torch(conv, bgr / 255 + torch.tensor(bias).reshape(1, 3, 1, 1))
    assert out.shape == (2, 4, 4, 4)  # batch of 2 through a batch-1 program
    assert rel_err(out, want) < 1e-5
    with pytest.raises(ValueError, match="uint8"):
        evaluator(image=rgb.astype(np.float32))


class Logits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def tiny_convnext(version: int) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    sizes = {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 32, 64], "num_labels": 10}
    if version == 1:
        config = transformers.ConvNextConfig(**sizes, layer_scale_init_value=0.5)
        return Logits(transformers.ConvNextForImageClassification(config)).eval()
    model = transformers.ConvNextV2ForImageClassification(transformers.ConvNextV2Config(**sizes))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "grn" in name:
                param.normal_(0.0, 0.5)
    return Logits(model).eval()


@pytest.mark.parametrize("version", [1, 2])
def test_convnext_classifier_end_to_end(version, tmp_path):
    module = tiny_convnext(version)
    labels = [f"class_{i}" for i in range(10)]
    image = ct.ImageType(
        name="image", shape=(1, 3, 224, 224), scale=1 / 255, bias=[0, 0, 0],
        color_layout=ct.colorlayout.RGB,
    )  # fmt: skip
    pixels = np.random.default_rng(version).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    (want,) = run_torch(module, torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
    for precision, min_cos in (("fp32", 0.9999), ("fp16", 0.999)):
        path = convert(
            module, torch.rand(1, 3, 224, 224), tmp_path / f"{precision}.mlpackage", precision,
            inputs=[image], classifier_config=ct.ClassifierConfig(labels),
        )  # fmt: skip
        evaluator = MilEvaluator.from_mlpackage(path)
        assert evaluator.input_names == ["image"]
        assert evaluator.output_names == ["classLabel", "classLabel_probs"]
        out = evaluator(image=pixels)
        logits = out[evaluator.probabilities_name]
        assert logits.shape == (2, 10)
        assert min(cosine(g, w) for g, w in zip(logits, want, strict=True)) >= min_cos
        assert list(out["classLabel"]) == [labels[i] for i in logits.argmax(axis=1)]
        assert out["classLabel_probs"][1][labels[3]] == pytest.approx(float(logits[1, 3]))
    assert NOTE.startswith("reference evaluation")


# ---------------------------------------------------------------------------------------------
# Compressed weights: the evaluator's own decompression vs torch with coremltools' decompression.
class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 64)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


PRUNE = ("prune", {"target_sparsity": 0.5})
COMPRESSIONS = {  # name -> (deployment target, passes applied in order, later ones joint)
    "int8_affine": ("iOS17", [("quantize", {})]),
    "lut4_ios16": ("iOS17", [("palettize", {"nbits": 4})]),
    "sparse_ios16": ("iOS17", [PRUNE]),
    "int4_block": (
        "iOS18",
        [("quantize", {"dtype": "int4", "granularity": "per_block", "block_size": 8})],
    ),
    "lut3_grouped_scaled": (
        "iOS18",
        [
            (
                "palettize",
                {
                    "nbits": 3,
                    "mode": "uniform",
                    "granularity": "per_grouped_channel",
                    "group_size": 8,
                    "enable_per_channel_scale": True,
                },
            )
        ],
    ),  # fmt: skip
    "lut2_vector": ("iOS18", [("palettize", {"nbits": 2, "mode": "kmeans", "cluster_dim": 2})]),
    "sparse_lut": ("iOS18", [PRUNE, ("palettize", {"nbits": 4, "mode": "uniform"})]),
    "sparse_int8": ("iOS18", [PRUNE, ("quantize", {})]),
}


def compress(model, passes):
    import coremltools.optimize.coreml as cto

    kinds = {
        "quantize": (cto.linear_quantize_weights, cto.OpLinearQuantizerConfig),
        "palettize": (cto.palettize_weights, cto.OpPalettizerConfig),
        "prune": (cto.prune_weights, cto.OpMagnitudePrunerConfig),
    }
    for i, (kind, options) in enumerate(passes):
        fn, op_config = kinds[kind]
        config = cto.OptimizationConfig(global_config=op_config(weight_threshold=0, **options))
        model = fn(model, config, joint_compression=True) if i else fn(model, config)
    return model


def dense_weights(model) -> dict[tuple[int, ...], np.ndarray]:
    """coremltools' own decompression of a compressed model's weights, keyed by shape."""
    import coremltools.optimize.coreml as cto

    program = cto.decompress_weights(model)._mil_program
    consts = (
        op.outputs[0].val for op in program.functions["main"].operations if op.op_type == "const"
    )
    return {v.shape: v for v in consts if isinstance(v, np.ndarray) and v.ndim >= 2}


@pytest.mark.parametrize("name", COMPRESSIONS)
def test_compressed_weights(name, tmp_path):
    target, passes = COMPRESSIONS[name]
    torch.manual_seed(0)
    module, x = Small().eval(), torch.randn(1, 16, 8, 8)
    dense = convert(module, x, tmp_path / "dense.mlpackage", target=getattr(ct.target, target))
    model = compress(ct.models.MLModel(str(dense)), passes)
    model.save(str(tmp_path / "compressed.mlpackage"))
    evaluator = MilEvaluator.from_mlpackage(tmp_path / "compressed.mlpackage")
    assert any(op.startswith("constexpr_") for op in evaluator.op_types)
    weights = dense_weights(model)
    with torch.no_grad():
        module.conv.weight.copy_(torch.from_numpy(weights[tuple(module.conv.weight.shape)]))
        module.fc.weight.copy_(torch.from_numpy(weights[tuple(module.fc.weight.shape)]))
    (want,) = run_torch(module, x)
    got = evaluator(x=x.numpy())[evaluator.output_names[0]]
    assert rel_err(got, want) < 1e-5


# ---------------------------------------------------------------------------------------------
# Speed without changing the numbers: batches through batch-1 programs, lookup tables, rounding.
def _items(evaluator: MilEvaluator, name: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    """The evaluator's outputs for each item of ``batch`` alone, stacked."""
    parts = [evaluator(**{name: batch[i : i + 1]}) for i in range(len(batch))]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if value.dtype == object:
            assert list(got[key]) == list(value)
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.fixture(scope="module")
def batch1_convnexts(tmp_path_factory) -> dict[str, Path]:
    """A tiny ConvNeXt V2 classifier with a batch-1 64x64 image input, at each precision."""
    root = tmp_path_factory.mktemp("batch1")
    module = tiny_convnext(2)
    image = ct.ImageType(name="image", shape=(1, 3, 64, 64), scale=1 / 255, bias=[0, 0, 0])
    labels = ct.ClassifierConfig([f"c{i}" for i in range(10)])
    return {
        precision: convert(
            module,
            torch.rand(1, 3, 64, 64),
            root / f"{precision}.mlpackage",
            precision,
            inputs=[image],
            classifier_config=labels,
        )  # fmt: skip
        for precision in PRECISIONS
    }


PIXELS = np.random.default_rng(1).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_batch_through_a_batch1_convnext_equals_its_items_bit_for_bit(
    precision, batch1_convnexts
):
    evaluator = MilEvaluator.from_mlpackage(batch1_convnexts[precision])
    assert evaluator.batched
    _assert_same(evaluator(image=PIXELS), _items(evaluator, "image", PIXELS))


def test_reused_buffers_change_no_result(batch1_convnexts, monkeypatch):
    from edge_convnext.targets import coreml_mil

    path = batch1_convnexts["fp16"]
    monkeypatch.setattr(coreml_mil._Arena, "MIN_BYTES", 1 << 62)  # numpy's own allocations
    want = MilEvaluator.from_mlpackage(path)(image=PIXELS)
    monkeypatch.setattr(coreml_mil._Arena, "MIN_BYTES", 0)  # every array from the arena
    evaluator = MilEvaluator.from_mlpackage(path)
    first = evaluator(image=PIXELS)
    assert evaluator._arena._free  # buffers kept for the next call
    _assert_same(first, want)
    _assert_same(evaluator(image=PIXELS), want)  # on reused buffers
    _assert_same(evaluator(image=PIXELS[:2]), {k: v[:2] for k, v in want.items()})


def test_batch_rewrites_of_shape_ops_keep_each_item_alone(tmp_path):
    """Reshape, slices, squeeze/expand, concat, reductions and rank-2 matmul on a batch-1
    program: rewritten to carry the batch, each item's result is its batch-1 result."""
    from coremltools.converters.mil import Builder as mb  # noqa: N813 - the documented alias

    weight = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 4))], opset_version=ct.target.iOS17)
    def prog(x):
        flat = mb.reshape(x=x, shape=[1, 12])
        sliced = mb.slice_by_index(x=x, begin=[0, 1, 0], end=[1, 3, 4], stride=[1, 1, 2])
        sized = mb.slice_by_size(x=x, begin=[0, 0, 1], size=[1, -1, 2])
        expanded = mb.squeeze(x=mb.expand_dims(x=x, axes=[2]), axes=[2])
        joined = mb.concat(values=[x, expanded], axis=1)
        means = mb.reduce_mean(x=joined, axes=[-1], keep_dims=False)  # (1, 6)
        product = mb.matmul(x=means, y=weight)  # rank 2: one row per item
        soft = mb.softmax(x=mb.linear(x=product, weight=weight), axis=-1)
        return flat, sliced, sized, joined, product, soft

    model = ct.convert(
        prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
        compute_precision=ct.precision.FLOAT32,
    )  # fmt: skip
    model.save(str(tmp_path / "shapes.mlpackage"))
    evaluator = MilEvaluator.from_mlpackage(tmp_path / "shapes.mlpackage")
    rewritten = {"reshape", "slice_by_index", "slice_by_size", "squeeze", "expand_dims"}
    assert rewritten | {"concat", "reduce_mean", "matmul", "linear"} <= evaluator.op_types
    assert evaluator.batched
    x = np.random.default_rng(1).normal(size=(4, 3, 4)).astype(np.float32)
    got = evaluator(x=x)
    _assert_same(got, _items(evaluator, "x", x))
    flat, sliced, sized = (got[n] for n in evaluator.output_names[:3])
    np.testing.assert_array_equal(flat, x.reshape(4, 12))
    np.testing.assert_array_equal(sliced, x[:, 1:3, ::2])
    np.testing.assert_array_equal(sized, x[:, :, 1:3])


class FlattensTheBatch(nn.Module):
    def forward(self, x):  # the batch axis is folded away: items cannot share one pass
        return (torch.flatten(x) * 2.0).reshape(1, -1)


def test_a_program_that_mixes_items_is_evaluated_item_by_item(tmp_path):
    path = convert(FlattensTheBatch(), torch.rand(1, 3, 2, 2), tmp_path / "flat.mlpackage")
    evaluator = MilEvaluator.from_mlpackage(path)
    assert not evaluator.batched
    x = np.random.default_rng(0).normal(size=(3, 3, 2, 2)).astype(np.float32)
    (out,) = (evaluator(x=x)[n] for n in evaluator.output_names)
    np.testing.assert_array_equal(out, x.reshape(3, -1) * 2.0)


class Tabulated(nn.Module):
    def forward(self, x):
        acts = [F.gelu(x), torch.sigmoid(x), torch.tanh(x), torch.exp(x), torch.rsqrt(x.abs())]
        return torch.cat(acts, dim=-1)


def test_lookup_tables_give_the_ops_own_results_for_every_fp16_input(tmp_path, monkeypatch):
    from edge_convnext.targets import coreml_mil

    path = convert(Tabulated(), torch.rand(1, 64), tmp_path / "tables.mlpackage", "fp16")
    tabulated = MilEvaluator.from_mlpackage(path)
    monkeypatch.setattr(coreml_mil, "_TABLE_OPS", frozenset())
    computed = MilEvaluator.from_mlpackage(path)
    tables = {s.op_type for s in tabulated._steps if isinstance(s.fn, coreml_mil._Table)}
    assert tables == {"gelu", "sigmoid", "tanh", "exp", "rsqrt"}
    assert not any(isinstance(s.fn, coreml_mil._Table) for s in computed._steps)
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    x = every[np.isfinite(every)].reshape(-1, 64)  # a batch of 992 rows
    with np.errstate(all="ignore"):
        _assert_same(tabulated(x=x), computed(x=x))


def test_fp16_rounding_is_numpys_cast_bit_for_bit():
    from edge_convnext.targets.coreml_mil import _round_to_fp16

    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    finite = np.sort(every[np.isfinite(every)])
    halfway = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)
    near = [(halfway.view(np.uint32) + np.uint32(d)).view(np.float32) for d in (1, 2**32 - 1)]
    specials = np.array([65519.99, 65520, 1e5, 3e38, np.inf, -np.inf, np.nan, -0.0, -1e-9])
    random_bits = np.random.default_rng(0).integers(0, 2**32, 1 << 20, dtype=np.uint32)
    values = np.concatenate([every, halfway, *near, specials.astype(np.float32)])
    values = np.concatenate([values, -values, random_bits.view(np.float32)])
    with np.errstate(all="ignore"):
        want = values.astype(np.float16).astype(np.float32)
        got = _round_to_fp16(values.copy(), fresh=True)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(
        got.view(np.uint32)[~np.isnan(want)], want.view(np.uint32)[~np.isnan(want)]
    )
