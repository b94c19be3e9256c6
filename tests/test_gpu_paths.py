"""The GPU paths' CPU-testable parts: the transformers compat shim, set-up in the target dtype with no
float32 copy, the static KV cache that CUDA graphs replay, and the bandwidth-fraction arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from conftest import LLAMA2_7B, SMALL_CONFIG
from llamanas_deploy.analytics import bandwidth_fraction, count_params, decode_step_bytes
from llamanas_deploy.model.compat import cache_keyword, forward_with_cache, returned_cache
from llamanas_deploy.model.families import ModelShape
from llamanas_deploy.model.supernet import random_subnet_model
from llamanas_deploy.profiler.backends import get_backend
from llamanas_deploy.profiler.backends.cuda_graphs import StaticKVCache, decode_step, prefill
from llamanas_deploy.profiler.base import SubnetMeasurement
from llamanas_deploy.profiler.stats import Measurement, Spread
from llamanas_deploy.space import load_space
from llamanas_deploy.subnet_config import SubnetConfig


# ---- transformers compat ----------------------------------------------------------------------
class OldOutput:
    def __init__(self, past_key_values):
        self.past_key_values = past_key_values


class OldStyleModel(nn.Module):
    """Takes its cache only as `past_key_values` (transformers 5.0 .. 5.17)."""

    def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs):
        assert "cache" not in kwargs, "the old keyword must be used"
        return OldOutput(("seen", past_key_values))


class NewStyleModel(nn.Module):
    def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs):
        assert "past_key_values" not in kwargs, "the new keyword must be used"
        return type("Out", (), {"cache": ("seen", cache), "past_key_values": None})()


@pytest.mark.parametrize("model_class, keyword", [(OldStyleModel, "past_key_values"), (NewStyleModel, "cache")])
def test_cache_keyword_follows_the_model(model_class, keyword):
    model = model_class()
    assert cache_keyword(model) == keyword
    out = forward_with_cache(model, "kv", input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True)
    assert returned_cache(out) == ("seen", "kv")


def test_cache_keyword_of_a_compiled_module_is_its_originals():
    wrapper = nn.Module()
    wrapper._orig_mod = OldStyleModel()  # what torch.compile's OptimizedModule holds
    assert cache_keyword(wrapper) == "past_key_values"


def test_returned_cache_says_what_is_missing():
    with pytest.raises(AttributeError, match="neither .cache nor .past_key_values"):
        returned_cache(object())


def test_installed_transformers_round_trips_a_cache(small_checkpoint):
    from llamanas_deploy.model.build import load_model

    model = load_model(small_checkpoint)[0]
    ids = torch.randint(0, 100, (1, 6))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :5], use_cache=True)
        step = forward_with_cache(model, returned_cache(first), input_ids=ids[:, 5:], use_cache=True)
    assert torch.allclose(step.logits[:, -1], full[:, -1], atol=1e-5)


# ---- set-up in the target dtype and device ----------------------------------------------------
def _config_file(tmp_path, **overrides):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SMALL_CONFIG | overrides))
    return path


def test_timing_weights_are_made_in_the_target_dtype_finite_and_not_denormal(tmp_path):
    subnet = SubnetConfig(num_layers=3, intermediate_sizes=[128, 64, 96])
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        model = random_subnet_model(_config_file(tmp_path), subnet, seed=3, dtype=dtype)
        for name, param in model.named_parameters():
            assert param.dtype == dtype and param.device.type == "cpu", name
            values = param.detach().float()
            assert torch.isfinite(values).all(), name
            tiny = values[(values != 0) & (values.abs() < torch.finfo(dtype).tiny)]
            assert tiny.numel() == 0, f"{name}: {tiny.numel()} denormal values"
            if name.endswith("norm.weight"):
                assert (values == 1).all()
            elif param.dim() == 2:
                assert values.std() > 0.01 and values.abs().min() > 0
    same = random_subnet_model(_config_file(tmp_path), subnet, seed=3).state_dict()
    other = random_subnet_model(_config_file(tmp_path), subnet, seed=4).state_dict()
    again = random_subnet_model(_config_file(tmp_path), subnet, seed=3).state_dict()
    key = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(same[key], again[key]) and not torch.equal(same[key], other[key])


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from pathlib import Path
    from llamanas_deploy.model.supernet import random_subnet_model
    from llamanas_deploy.subnet_config import SubnetConfig

    def kib(field):
        return int(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field)).split()[1])

    import transformers.models.llama.modeling_llama  # libraries' own start-up memory before the baseline
    torch.empty(1)
    Path("/proc/self/clear_refs").write_text("5")
    base = kib("VmRSS")
    model = random_subnet_model(sys.argv[1], SubnetConfig(num_layers=6, intermediate_sizes=[4096] * 6), dtype=torch.bfloat16)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"bytes": nbytes, "growth": (kib("VmHWM") - base) * 1024}))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak resident set from /proc")
def test_bf16_set_up_peaks_near_the_sub_networks_own_bytes(tmp_path):
    """~230 MB of bf16 weights: the old path (a float32 skeleton, then a cast) peaked above 2x."""
    config = _config_file(tmp_path, hidden_size=1024, num_attention_heads=8, num_key_value_heads=8,
                          num_hidden_layers=6, intermediate_size=4096, vocab_size=32000)  # fmt: skip
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(config)], capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout)
    assert figures["bytes"] > 200 * 1024**2
    assert figures["growth"] <= 1.3 * figures["bytes"], figures


# ---- the static KV cache that CUDA graphs replay ----------------------------------------------
def test_static_cache_decode_matches_the_full_forward(gqa_checkpoint):
    from llamanas_deploy.model.build import load_model

    model = load_model(gqa_checkpoint)[0]
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = StaticKVCache(model.config, batch=2, length=9, dtype=torch.float32, device="cpu")
        logits = prefill(model, cache, ids[:, :5])
        assert torch.allclose(logits[:, -1], full[:, 4], atol=1e-5)
        mask = torch.zeros(2, 1, 1, 9, dtype=torch.bool)
        mask[..., :5] = True
        positions = torch.full((2, 1), 5)
        for t in (5, 6):  # the graph's step: mark the slot, run, move on (all in place, on the device)
            mask.index_fill_(3, cache.position, True)
            logits = decode_step(model, cache, ids[:, t : t + 1], positions, mask)
            assert torch.allclose(logits[:, -1], full[:, t], atol=1e-5), t
            cache.position.add_(1)
            positions.add_(1)


def test_a_static_decode_step_reads_no_value_on_the_host(gqa_checkpoint):
    """On the meta device any host read (`.item()`, `if tensor:`) fails: what a CUDA graph capture forbids."""
    from llamanas_deploy.model.build import load_model

    model = load_model(gqa_checkpoint)[0].to("meta")
    cache = StaticKVCache(model.config, batch=2, length=9, dtype=torch.float32, device="meta")
    ids = torch.zeros(2, 1, dtype=torch.long, device="meta")
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool, device="meta")
    try:
        with torch.no_grad():
            logits = decode_step(model, cache, ids, ids.clone(), mask)
    except RuntimeError as err:
        if "autocast" in str(err):  # older transformers wrap rotary in autocast, which has no meta device
            pytest.skip(f"this transformers cannot run on the meta device: {err}")
        raise
    assert logits.shape == (2, 1, model.config.vocab_size)


# ---- memory bandwidth -------------------------------------------------------------------------
def test_decode_step_bytes_of_llama2_7b():
    shape = ModelShape.from_config_dict(LLAMA2_7B, "llama2-7b")
    full = load_space("llama2-7b-paper").largest
    matmul = count_params(shape, full)[1]
    kv_token = 2 * 32 * 4096 * 2
    assert decode_step_bytes(shape, full, context_len=128) == 2 * matmul + 128 * kv_token
    assert decode_step_bytes(shape, full, context_len=128, batch_size=16) == 2 * matmul + 16 * 128 * kv_token
    assert 13.2e9 < 2 * matmul < 13.3e9  # the matrices a bf16 decode step streams (the embedding is a lookup)


def test_bandwidth_fraction_arithmetic():
    assert bandwidth_fraction(4_800_000_000, 1.0, 4800.0) == pytest.approx(1.0)
    assert bandwidth_fraction(13_476_000_000, 18.2, 4800.0) == pytest.approx(0.154, abs=1e-3)  # the eager figure
    with pytest.raises(ValueError):
        bandwidth_fraction(1, 0.0, 4800.0)


def test_gpu_records_carry_the_bandwidth_fraction():
    def figure(ms: float) -> Measurement:
        return Measurement(Spread(ms, 0.0, 0.0, 5, ms), attempts=1, flagged=False)

    extra = {"execution": "cuda-graphs", "decode_bytes_per_step": 4_000_000_000, "peak_bandwidth_gb_s": 4000.0}
    measured = SubnetMeasurement(figure(3.0), figure(2.0), figure(100.0), 1.0, 10, "random", extra)
    record = measured.to_dict()
    assert record["execution"] == "cuda-graphs" and record["decode_bandwidth_fraction"] == pytest.approx(0.5)
    assert "decode_bandwidth_fraction" not in SubnetMeasurement(figure(3.0), figure(2.0), figure(100.0), 1.0, 10, "random").to_dict()


def test_eager_backend_is_registered_for_comparison():
    eager, graphs = get_backend("torch-eager"), get_backend("torch")
    assert issubclass(eager, graphs) and graphs.cuda_graphs and not eager.cuda_graphs
    assert "cuda" in eager.devices


# ---- the CUDA artifact's graph, built and run on the CPU --------------------------------------
def test_fp16_graph_keeps_the_kv_cache_in_fp16_and_matches_torch(small_checkpoint, tmp_path):
    import numpy as np

    from llamanas_deploy.model.build import load_model
    from llamanas_deploy.onnx_model.config import onnx_config_for
    from llamanas_deploy.exporter.verify import relative_tolerance
    from llamanas_deploy.onnx_model.fp16 import FP16_RELATIVE_TOLERANCE, export_fp16
    from llamanas_deploy.runtime import OrtDecoder

    model, config_dict, _ = load_model(small_checkpoint)
    ids = np.random.default_rng(0).integers(0, 100, (2, 7))
    with torch.no_grad():
        reference = model(torch.from_numpy(ids), use_cache=False).logits.numpy()
    onnx_config = onnx_config_for(config_dict | {"intermediate_sizes": [128] * 4}, "small")
    decoder = OrtDecoder(export_fp16(model, onnx_config, tmp_path), "cpu")
    types = {arg.name: arg.type for arg in [*decoder.session.get_inputs(), *decoder.session.get_outputs()]}
    assert types["past_key_values.0.key"] == types["present.3.value"] == types["logits"] == "tensor(float16)"
    assert decoder.empty_past(2)["past_key_values.0.key"].dtype == np.float16
    logits, past = decoder.forward(ids[:, :6], decoder.empty_past(2))
    step, _ = decoder.forward(ids[:, 6:], past)
    tolerance = relative_tolerance(reference, FP16_RELATIVE_TOLERANCE)
    assert np.abs(logits.astype(np.float32) - reference[:, :6]).max() <= tolerance
    assert np.abs(step[:, -1].astype(np.float32) - reference[:, 6]).max() <= tolerance


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_export_for_cuda_is_refused_in_one_line_without_a_gpu(capsys, tmp_path, small_checkpoint, small_space_file):
    from conftest import run_cli

    code, _, err = run_cli(capsys, "export", "--model", str(small_checkpoint), "--space", str(small_space_file),
                           "--subnet", '{"num_layers": 2, "intermediate_sizes": [32, 32]}',
                           "--out", str(tmp_path / "a"), "--device", "cuda")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "CUDAExecutionProvider" in err, err
    assert not (tmp_path / "a").exists()


# ---- the CUDA artifact: precisions, int4 over fp16, IO binding, the pipeline (on the CPU provider) ----
SMALL_SUBNET = '{"num_layers": 2, "intermediate_sizes": [32, 32]}'


@pytest.fixture(scope="module")
def fp16_graphs(small_checkpoint, tmp_path_factory):
    """The small model's float16 graph and its int4 (MatMulNBits, CUDA settings) version, and the torch model."""
    from llamanas_deploy.model.build import load_model
    from llamanas_deploy.onnx_model.config import onnx_config_for
    from llamanas_deploy.onnx_model.graphs import export_graph, graph_dtype, graph_for
    from llamanas_deploy.onnx_model.quantize import quantize, settings_for

    model, config_dict, _ = load_model(small_checkpoint)
    config = onnx_config_for(config_dict | {"intermediate_sizes": [128] * 4}, "small")
    root = tmp_path_factory.mktemp("fp16")
    graph = graph_for("cuda", config)
    fp16 = export_graph(model, config, root, graph, "fp16", graph_dtype("cuda"))
    assert next(model.parameters()).dtype == torch.float32  # exported from a copy: the reference stays fp32
    quant = quantize(fp16, root / "int4.onnx", settings_for("int4", "cuda"), False)
    return {"model": model, "config": config, "fp16": fp16, "int4": root / "int4.onnx", "quant": quant}


@pytest.mark.parametrize(
    "device, precision, fragment",
    [("cuda", "int8", "CPU graph only"), ("cuda", "fp32", "float16"), ("cpu", "fp16", "CUDA artifact")],
)
def test_each_device_deploys_its_own_precisions(device, precision, fragment):
    from llamanas_deploy.errors import BadInputError
    from llamanas_deploy.exporter import ExportSettings

    assert ExportSettings().precision == "fp32" and ExportSettings(device="cuda").precision == "fp16"
    assert ExportSettings(device="cuda", precision="int4").precision == "int4"
    with pytest.raises(BadInputError) as err:
        ExportSettings(device=device, precision=precision)
    assert err.value.param == "precision" and fragment in str(err.value) and "\n" not in str(err.value)


def test_int8_on_cuda_is_refused_by_the_quantizer_settings_too():
    from llamanas_deploy.errors import BadInputError
    from llamanas_deploy.onnx_model.quantize import settings_for

    with pytest.raises(BadInputError, match="CPU graph only"):
        settings_for("int8", "cuda")
    assert settings_for("int4", "cuda").block_size == 32 and settings_for("fp16", "cuda") is None


def test_cli_refuses_int8_on_cuda_in_one_line(capsys, tmp_path, small_checkpoint, small_space_file):
    from conftest import run_cli

    code, _, err = run_cli(capsys, "export", "--model", str(small_checkpoint), "--space", str(small_space_file),
                           "--subnet", SMALL_SUBNET, "--out", str(tmp_path / "a"), "--device", "cuda",
                           "--precision", "int8")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "--precision" in err and "CPU graph only" in err, err
    assert not (tmp_path / "a").exists()


def test_int4_for_cuda_is_matmulnbits_over_the_fp16_graph(fp16_graphs):
    import numpy as np
    import onnx

    from llamanas_deploy.runtime import OrtDecoder

    graph = onnx.load(str(fp16_graphs["int4"]))
    nbits = [n for n in graph.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 4 * 7  # q, k, v, o, gate, up, down of each layer; the LM head stays fp16
    assert [n.name for n in graph.graph.node if n.op_type == "MatMul" and n.name in fp16_graphs["quant"].excluded_nodes]
    scales = {t.name: t.data_type for t in graph.graph.initializer}
    assert all(scales[n.input[2]] == onnx.TensorProto.FLOAT16 for n in nbits)
    attrs = {a.name: a.i for a in nbits[0].attribute}
    assert attrs["bits"] == 4 and attrs["block_size"] == 32
    assert attrs.get("accuracy_level", 0) == 0  # 0 is the attribute's default: not written
    ids = np.random.default_rng(0).integers(0, 100, (2, 7))
    base, int4 = OrtDecoder(fp16_graphs["fp16"], "cpu"), OrtDecoder(fp16_graphs["int4"], "cpu")
    a, _ = base.forward(ids, base.empty_past(2))
    b, _ = int4.forward(ids, int4.empty_past(2))
    assert b.dtype == np.float16 and np.isfinite(b).all() and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("graph", ["fp16", "int4"])
def test_io_binding_keeps_the_cache_in_ortvalues_and_gives_the_plain_paths_logits(fp16_graphs, graph):
    """The CUDA path's binding code on the CPU provider (where io_binding works the same way)."""
    import numpy as np
    import onnxruntime as ort

    from llamanas_deploy.runtime import OrtDecoder, generate, host

    plain = OrtDecoder(fp16_graphs[graph], "cpu")
    bound = OrtDecoder(fp16_graphs[graph], "cpu", io_binding=True)
    assert not plain.io_binding and bound.io_binding
    ids = np.random.default_rng(1).integers(0, 100, (2, 9))
    logits_a, past_a = plain.forward(ids[:, :6], plain.empty_past(2))
    logits_b, past_b = bound.forward(ids[:, :6], bound.empty_past(2))
    assert all(isinstance(v, ort.OrtValue) for v in past_b.values())
    np.testing.assert_array_equal(logits_a, logits_b)
    for name in plain.past_names:
        np.testing.assert_array_equal(past_a[name], host(past_b[name]))
    for t in (6, 7, 8):  # decode steps feed the bound cache straight back
        logits_a, past_a = plain.forward(ids[:, t : t + 1], past_a)
        logits_b, past_b = bound.forward(ids[:, t : t + 1], past_b)
        np.testing.assert_array_equal(logits_a, logits_b)
    assert host(past_b["past_key_values.0.key"]).shape == (2, 4, 9, 16)
    prompt = ids[0, :5].tolist()
    assert generate(plain, prompt, 6).tokens == generate(bound, prompt, 6).tokens


def test_fp16_verification_uses_relative_tolerances_through_io_binding(fp16_graphs):
    import numpy as np

    from llamanas_deploy.exporter.verify import torch_reference, verify_fp32
    from llamanas_deploy.onnx_model.fp16 import FP16_RELATIVE_TOLERANCE
    from llamanas_deploy.runtime import OrtDecoder

    decoder = OrtDecoder(fp16_graphs["fp16"], "cpu", io_binding=True)
    tokens = np.random.default_rng(2).integers(0, 256, 64).tolist()
    report = verify_fp32(torch_reference(fp16_graphs["model"], fp16_graphs["config"], tokens), decoder, fp16_graphs["config"])
    assert report["graph_dtype"] == "float16" and report["relative_tolerance"] == FP16_RELATIVE_TOLERANCE
    for step in ("prefill", "decode"):
        figures = report[step]
        assert 0 < figures["logits_max_abs_diff"] <= figures["logits_tolerance"]
        assert figures["kv_max_abs_diff"] <= figures["kv_tolerance"]


def test_cuda_export_pipeline_end_to_end_on_the_cpu_provider(monkeypatch, tmp_path, small_checkpoint, small_space_file):
    """`export --device cuda --precision int4` with ONNX Runtime's CPU provider standing in for CUDA:
    the fp16 graph, int4 over it, the checks, genai_config naming CUDA, a bench through IO binding."""
    from llamanas_deploy import runtime
    from llamanas_deploy.exporter import BenchSettings, ExportSettings, bench, export
    from llamanas_deploy.profiler.base import Shapes
    from llamanas_deploy.profiler.stats import Protocol

    real = runtime.check_device
    monkeypatch.setattr(runtime, "check_device", lambda device: real("cpu"))
    quick = BenchSettings(shapes=Shapes(1, 8, 8, 4), protocol=Protocol(warmup=1, repeats=3, max_attempts=1))
    settings = ExportSettings(device="cuda", precision="int4", max_eval_tokens=512)
    result = export(small_checkpoint, small_space_file, SMALL_SUBNET, settings, out=tmp_path / "a", bench=quick)
    m = result.manifest
    assert m["device"] == "cuda" and m["precision"] == "int4" and m["onnx"]["dtype"] == "float16"
    assert m["quantization"]["method"] == "MatMulNBits" and m["quantization"]["block_size"] == 32
    assert set(m["verification"]) == {"data", "fp16_vs_torch", "quantized_vs_fp16"}
    assert m["verification"]["fp16_vs_torch"]["graph_dtype"] == "float16"
    assert "perplexity_fp16" in m["verification"]["quantized_vs_fp16"]
    assert m["measured"]["io_binding"] is True and m["measured"]["decode_ms"]["median"] > 0
    genai = json.loads((tmp_path / "a" / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["session_options"]["provider_options"] == [{"cuda": {}}]
    assert genai["search"]["past_present_share_buffer"] is False
    assert runtime.open_artifact(tmp_path / "a").decoder().io_binding  # generate runs it bound
    again = bench(tmp_path / "a", quick).measured
    assert again["io_binding"] is True and again["device"] == "cuda"
