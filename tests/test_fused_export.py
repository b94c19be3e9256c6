"""The fused CPU graph (`onnx_model/fused.py`): its logits equal torch's, heterogeneous MLP widths
export and run in plain ONNX Runtime and in onnxruntime-genai, quantized files share the tied
embedding, exports are byte-identical, and the profiler exports each sub-network once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import write_space

from llamanas_deploy.exporter import ExportSettings, export
from llamanas_deploy.exporter.verify import torch_reference, verify_fp32
from llamanas_deploy.model.supernet import SuperNetwork
from llamanas_deploy.onnx_model.config import onnx_config_for
from llamanas_deploy.onnx_model.fused import EMBEDDING, build_fused, export_fused
from llamanas_deploy.profiler.base import Shapes
from llamanas_deploy.profiler.stats import Protocol
from llamanas_deploy.runtime import OrtDecoder, generate
from llamanas_deploy.subnet_config import SubnetConfig

HETERO = SubnetConfig(3, (128, 32, 96))
TINY_MAX_ABS_DIFF = 1e-4  # what the fused float32 graph shows on these small models (the gate is relative)


def fused_decoder(model, tmp_path: Path, fuse_gate_up: bool = True) -> tuple[OrtDecoder, object]:
    config = onnx_config_for(model.config.to_dict(), "test")
    return OrtDecoder(export_fused(model, config, tmp_path, fuse_gate_up)), config


def ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    return write_space(tmp_path_factory.mktemp("space") / "space.json")


@pytest.fixture(scope="module")
def artifacts(small_checkpoint, space_file, tmp_path_factory) -> dict[str, Path]:
    """The heterogeneous sub-network exported by the pipeline at every precision (no bench)."""
    root = tmp_path_factory.mktemp("fused")
    out = {}
    for precision in ("fp32", "int8", "int4"):
        out[precision] = root / precision
        settings = ExportSettings(precision=precision, max_eval_tokens=512)
        export(small_checkpoint, space_file, HETERO, settings, out=out[precision], bench=None)
    return out


def _swap_first_layers(model) -> None:
    layers = model.model.layers
    layers[0], layers[1] = layers[1], layers[0]
    for index, layer in enumerate(layers):
        layer.self_attn.layer_idx = index


def _rotary_base_times_ten(model) -> None:
    params = getattr(model.config, "rope_parameters", None)  # transformers >= 5.x keeps the base there
    if isinstance(params, dict):
        params["rope_theta"] *= 10
    else:
        model.config.rope_theta *= 10
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)


def _one_layer_attends_everywhere(model) -> None:
    """A mask bug: layer 1 lets every token see the future."""
    model.model.layers[1].self_attn.is_causal = False  # sdpa: no mask and not causal sees everything
    forward = model.model.layers[1].self_attn.forward
    model.model.layers[1].self_attn.forward = lambda *a, **k: forward(*a, **(k | {"attention_mask": None}))


@pytest.mark.parametrize("break_model", [_swap_first_layers, _rotary_base_times_ten, _one_layer_attends_everywhere])
def test_the_fp32_gate_catches_a_graph_that_is_not_the_model(small_checkpoint, tmp_path, break_model):
    """The gate's tolerance is relative to the logits' magnitude, yet a wrong graph still fails it: the ORT
    graph of the sub-network against a torch model that differs as a wrong export would."""
    from llamanas_deploy.errors import VerificationError

    model = SuperNetwork.load(small_checkpoint).extract(HETERO)
    decoder, config = fused_decoder(model, tmp_path)
    tokens = np.random.default_rng(2).integers(0, config.vocab_size, 64).tolist()
    verify_fp32(torch_reference(model, config, tokens), decoder, config)  # the real model passes
    break_model(model)
    with pytest.raises(VerificationError, match="logits max abs diff"):
        verify_fp32(torch_reference(model, config, tokens), decoder, config)


@pytest.mark.parametrize(
    ("overrides", "fuse_gate_up"), [({}, True), ({"num_key_value_heads": 2, "tie_word_embeddings": True}, False)]
)
def test_fused_logits_equal_torch_on_prefill_and_a_cached_step(overrides, fuse_gate_up, tmp_path):
    """Untied multi-head and tied grouped-query attention (4 heads on 2 KV heads), heterogeneous
    widths; gate and up in one MatMul (as quantized) and in two (as deployed in fp32)."""
    from conftest import make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "model", seed=3, **overrides)
    model = SuperNetwork.load(checkpoint).extract(HETERO)
    decoder, config = fused_decoder(model, tmp_path, fuse_gate_up)
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (2, 9))
    logits, present = decoder.forward(ids, decoder.empty_past(2))
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(logits - expected).max() <= TINY_MAX_ABS_DIFF
    assert present["past_key_values.2.key"].shape == (2, config.num_kv_heads, 9, config.head_dim)
    # the export's gate: prefill (batch 2) and one cached decode step, logits and present KV
    tokens = np.random.default_rng(2).integers(0, config.vocab_size, 64).tolist()
    report = verify_fp32(torch_reference(model, config, tokens), decoder, config)
    for step in ("prefill", "decode"):
        assert report[step]["logits_max_abs_diff"] <= TINY_MAX_ABS_DIFF and report[step]["kv_max_abs_diff"] <= TINY_MAX_ABS_DIFF


def test_head_sizes_the_cpu_kernel_refuses_fall_back_to_the_dynamo_graph(gqa_checkpoint):
    from llamanas_deploy.onnx_model.graphs import graph_for

    config = onnx_config_for(json.loads((gqa_checkpoint / "config.json").read_text()), "gqa")
    assert config.head_dim == 8 and graph_for("cpu", config) == "dynamo"
    assert graph_for("cuda", onnx_config_for(json.loads((gqa_checkpoint / "config.json").read_text()), "x")) == "dynamo"


def test_fused_graph_uses_fused_ops_with_each_layers_width(small_checkpoint):
    model = SuperNetwork.load(small_checkpoint).extract(HETERO)
    proto = build_fused(model, onnx_config_for(model.config.to_dict(), "test"))
    counts = Counter(n.op_type for n in proto.graph.node)
    assert counts["GroupQueryAttention"] == 3 and counts["SkipSimplifiedLayerNormalization"] == 6
    assert not {"Pow", "ReduceMean", "Sqrt", "Softmax"} & set(counts)
    widths = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    for i, size in enumerate(HETERO.intermediate_sizes):
        assert widths[f"layers.{i}/mlp/gate_up_proj.weight"] == (64, 2 * size)
        assert widths[f"layers.{i}/mlp/down_proj.weight"] == (size, 64)
    separate = build_fused(model, onnx_config_for(model.config.to_dict(), "test"), fuse_gate_up=False)
    widths = {t.name: tuple(t.dims) for t in separate.graph.initializer}
    assert [widths[f"layers.{i}/mlp/up_proj.weight"] for i in range(3)] == [(64, s) for s in HETERO.intermediate_sizes]
    assert "Split" not in {n.op_type for n in separate.graph.node}


def test_heterogeneous_artifacts_run_in_onnxruntime(artifacts):
    manifest = json.loads((artifacts["fp32"] / "manifest.json").read_text())
    assert manifest["onnx"]["graph"] == "fused"
    assert manifest["verification"]["fp32_vs_torch"]["decode"]["logits_max_abs_diff"] <= TINY_MAX_ABS_DIFF
    reference = generate(OrtDecoder(artifacts["fp32"] / "model.onnx"), [5, 6, 7], 6).tokens
    for precision in ("int8", "int4"):
        path = artifacts[precision] / "model.onnx"
        counts = ops(path)
        assert counts["MatMulNBits"] == 3 * 4 + 1 and "MatMul" not in counts  # the LM head too
        assert counts["GatherBlockQuantized"] == 1  # the untied embedding reads blocks of its own
        quant = json.loads((artifacts[precision] / "manifest.json").read_text())["verification"]["quantized_vs_fp32"]
        assert 0 <= quant["greedy_agreement"] <= 1 and np.isfinite(quant["perplexity_change_pct"])
        assert len(generate(OrtDecoder(path), [5, 6, 7], 6).tokens) == len(reference)
    sizes = [sum(p.stat().st_size for p in artifacts[k].glob("model.onnx*")) for k in ("fp32", "int8", "int4")]
    assert sizes[0] > sizes[1] > sizes[2]


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_heterogeneous_artifact_runs_in_onnxruntime_genai(artifacts, precision):
    og = pytest.importorskip("onnxruntime_genai")
    prompt, new = [9, 8, 7, 6], 8
    model = og.Model(str(artifacts[precision]))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([prompt], dtype=np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    assert tokens == generate(OrtDecoder(artifacts[precision] / "model.onnx"), prompt, new).tokens


@pytest.mark.parametrize("tied", [True, False])
def test_quantized_embedding_reads_blocks_not_an_fp32_table(tmp_path, tied):
    """Tied: the embedding reads the LM head's quantized blocks (one copy in the file); untied: blocks of
    its own. No fp32 table is left in the file, and the logits stay near fp32's."""
    from conftest import make_checkpoint

    from llamanas_deploy.onnx_model.quantize import settings_for

    checkpoint = SuperNetwork.load(make_checkpoint(tmp_path / "model", seed=2, tie_word_embeddings=tied))
    model = checkpoint.extract(SubnetConfig(2, (64, 32)))
    config = onnx_config_for(model.config.to_dict(), "test")
    fp32 = OrtDecoder(export_fused(model, config, tmp_path))
    ids = np.random.default_rng(0).integers(0, 256, 20)[None]
    reference = fp32.forward(ids, fp32.empty_past(1))[0]
    for precision in ("int8", "int4"):
        out = tmp_path / precision
        out.mkdir()
        export_fused(model, config, out, quant=settings_for(precision, "cpu"))
        graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
        names = {t.name for t in graph.initializer}
        assert EMBEDDING not in names and "lm_head.weight_scales" in names
        assert ("model.embed_tokens.weight_scales" in names) is not tied
        assert not any(n.op_type == "Gather" and n.input[0] == EMBEDDING for n in graph.node)
        quantized = OrtDecoder(out / "model.onnx")
        logits, _ = quantized.forward(ids, quantized.empty_past(1))
        assert logits.shape == (1, 20, 256) and np.isfinite(logits).all()
        # random weights: the logits stay close to fp32's (a wrong table or scale would not)
        assert np.abs(logits - reference).max() < 0.2 * np.abs(reference).max()


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_as_built_equals_ort_quantizer_over_the_fp32_graph(small_checkpoint, tmp_path, precision):
    """The fused graph quantized weight by weight as it is built is what ORT's own `MatMulNBitsQuantizer`
    makes of the saved float32 graph: the same MatMulNBits nodes, the same blocks and scales."""
    from onnx import numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from llamanas_deploy.onnx_model.quantize import settings_for

    settings = settings_for(precision, "cpu")
    model = SuperNetwork.load(small_checkpoint).extract(HETERO)
    config = onnx_config_for(model.config.to_dict(), "test")
    (tmp_path / "fp32").mkdir()
    (tmp_path / "q").mkdir()
    fp32 = onnx.load(str(export_fused(model, config, tmp_path / "fp32", fuse_gate_up=True)))
    options = dict(block_size=settings.block_size, is_symmetric=True, accuracy_level=settings.accuracy_level)
    theirs = MatMulNBitsQuantizer(fp32, bits=settings.bits, **options,
                                  algo_config=DefaultWeightOnlyQuantConfig(**options, bits=settings.bits))  # fmt: skip
    theirs.process()
    ours = onnx.load(str(export_fused(model, config, tmp_path / "q", quant=settings)))

    def matmuls(graph) -> dict:
        return {n.name: (list(n.input), list(n.output), sorted((a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute))
                for n in graph.node if n.op_type == "MatMulNBits"}  # fmt: skip

    def blocks(graph) -> dict:
        return {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith(("_scales", f"_Q{settings.bits}"))}

    expected, got = matmuls(theirs.model.model.graph), matmuls(ours.graph)
    assert len(got) == 4 * len(HETERO.intermediate_sizes) + 1  # qkv, o, gate|up, down per layer; the LM head
    assert {k: v for k, v in got.items() if k in expected} == expected  # ORT leaves the tied head's Transpose alone
    mine = blocks(ours.graph)
    for name, array in blocks(theirs.model.model.graph).items():
        np.testing.assert_array_equal(mine[name], array)


def test_fused_export_is_deterministic(small_checkpoint, tmp_path):
    from llamanas_deploy.onnx_model.quantize import settings_for

    model = SuperNetwork.load(small_checkpoint).extract(HETERO)
    config = onnx_config_for(model.config.to_dict(), "test")
    files = []
    for name in ("a", "b"):
        for kind, quant in (("fp32", None), ("int4", settings_for("int4", "cpu"))):
            (tmp_path / name / kind).mkdir(parents=True)
            export_fused(model, config, tmp_path / name / kind, quant=quant)
        files.append(sorted((p.relative_to(tmp_path / name), p.read_bytes()) for p in (tmp_path / name).rglob("*.onnx*")))
    assert len(files[0]) == 4 and files[0] == files[1]


def test_profiler_exports_each_subnet_once_across_visits(small_checkpoint):
    from llamanas_deploy.profiler.backends import get_backend

    backend = get_backend("onnxruntime")(small_checkpoint, "int4", "cpu", 1, weights="random")
    subnets = [SubnetConfig(2, (32, 64)), SubnetConfig(3, (128, 32, 96))]
    protocol = Protocol(warmup=1, repeats=3, max_attempts=1, visits=2)
    measured = backend.measure_visits(subnets, Shapes(1, 8, 8, 3), protocol)
    assert backend.exports_made == 2
    assert [m.decode_ms.visits for m in measured] == [2, 2]


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_weights_stream_to_external_data_as_they_are_made(small_checkpoint, tmp_path, precision):
    """`model.onnx` holds the graph, `model.onnx.data` every weight of a KiB or more (offsets on a page),
    nothing else is left behind, and the file runs."""
    from llamanas_deploy.onnx_model.fused import ALIGNMENT, EXTERNAL_MIN_BYTES
    from llamanas_deploy.onnx_model.quantize import settings_for

    model = SuperNetwork.load(small_checkpoint).extract(HETERO)
    export_fused(model, onnx_config_for(model.config.to_dict(), "test"), tmp_path, quant=settings_for(precision, "cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False).graph
    for tensor in graph.initializer:
        external = {e.key: e.value for e in tensor.external_data}
        if external:
            assert external["location"] == "model.onnx.data" and int(external["offset"]) % ALIGNMENT == 0
        else:
            assert len(tensor.raw_data) < EXTERNAL_MIN_BYTES
    assert len(generate(OrtDecoder(tmp_path / "model.onnx"), [1, 2, 3], 4).tokens) == 4


def test_export_cache_keeps_exports_until_the_disk_needs_room():
    from llamanas_deploy.profiler.backends.onnxruntime_backend import ExportCache

    roomy, tight = ExportCache(reserve_bytes=0), ExportCache(reserve_bytes=1 << 62)  # never / always short of room
    for cache in (roomy, tight):
        for key in ("a", "b", "c"):
            cache.directory(key).mkdir()
            (cache.directory(key) / "model.onnx").write_bytes(b"x")
            cache.add(key)
    assert [k for k in "abc" if roomy.get(k, "model.onnx")] == ["a", "b", "c"]
    assert [k for k in "abc" if tight.get(k, "model.onnx")] == ["c"]  # the newest export always stays
