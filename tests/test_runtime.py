"""The ORT-only runtime and the export's small decisions: sampling, perplexity arithmetic,
quantization settings, manifest checks, comparison with a prediction; and the profiler's
`onnxruntime` backend measuring a real exported sub-network."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llamanas_deploy.errors import BadInputError
from llamanas_deploy.onnx_model.artifact import KIND, SCHEMA_VERSION, read_manifest, write_manifest
from llamanas_deploy.exporter.measure import compare_with_prediction
from llamanas_deploy.onnx_model.quantize import settings_for
from llamanas_deploy.runtime import Sampling, pick_token, summed_nll
from llamanas_deploy.subnet_config import SubnetConfig


@pytest.mark.parametrize("precision, bits", [("int8", 8), ("int4", 4)])
def test_quantization_settings_defaults_and_bad_values(precision, bits):
    cpu = settings_for(precision, "cpu")
    assert (cpu.method, cpu.bits, cpu.block_size, cpu.accuracy_level) == ("MatMulNBits", bits, 32, 4)
    assert f"defaults for {precision} on cpu" in cpu.reason
    given = settings_for(precision, "cpu", block_size=128, accuracy_level=0)
    assert (given.block_size, given.accuracy_level) == (128, 0) and "given" in given.reason
    with pytest.raises(BadInputError, match="block_size: 48: expected one of") as err:
        settings_for(precision, "cpu", block_size=48)
    assert err.value.param == "block_size"
    with pytest.raises(BadInputError, match="accuracy_level: 9: expected one of") as err:
        settings_for(precision, "cpu", accuracy_level=9)
    assert err.value.param == "accuracy_level"
    assert settings_for("fp32", "cpu") is None


def test_nll_matches_log_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 30  # large values: needs the max shift
    targets = rng.integers(0, 11, (2, 5))
    expected = 0.0
    for b in range(2):
        for t in range(5):
            row = logits[b, t].astype(np.float64)
            expected -= row[targets[b, t]] - (row.max() + math.log(np.exp(row - row.max()).sum()))
    assert summed_nll(logits, targets) == pytest.approx(expected, rel=1e-6)  # float32 logits: ~1e-7 each


def test_sampling_stays_in_top_k_and_validates():
    logits = np.arange(50, dtype=np.float32)
    rng = np.random.default_rng(0)
    picks = {pick_token(logits, Sampling(temperature=5.0, top_k=3), rng) for _ in range(300)}
    assert picks == {47, 48, 49}
    assert pick_token(logits, Sampling(), rng) == 49
    with pytest.raises(BadInputError, match="temperature: must be >= 0") as err:
        Sampling(temperature=-1.0)
    assert err.value.param == "temperature"


def test_compare_with_prediction():
    measured = {"decode_ms": {"median": 4.0}, "backend": "onnxruntime", "precision": "int8", "threads": 1,
                "fingerprint_id": "abc"}  # fmt: skip
    predicted = {"metric": "decode_ms", "value": 5.0, "backend": "onnxruntime", "precision": "int8", "threads": 1,
                 "fingerprint_id": "abc"}  # fmt: skip
    result = compare_with_prediction(measured, predicted)
    assert result["error_pct"] == pytest.approx(25.0) and result["same_setup"]
    other = compare_with_prediction(measured, predicted | {"backend": "torch"})
    assert not other["same_setup"]


def test_manifest_problems_are_one_line_bad_input(tmp_path):
    import hashlib

    def seal(text: str) -> None:  # what an editor who also recomputes manifest.sha256 does
        (tmp_path / "manifest.json").write_text(text)
        (tmp_path / "manifest.sha256").write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  manifest.json\n")

    with pytest.raises(BadInputError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BadInputError, match="manifest.sha256: missing"):
        read_manifest(tmp_path)
    seal("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        read_manifest(tmp_path)
    seal(json.dumps({"kind": "other"}))
    with pytest.raises(BadInputError, match="not a llamanas artifact manifest"):
        read_manifest(tmp_path)
    (tmp_path / "model.onnx").write_bytes(_empty_graph())
    write_manifest(tmp_path, {"precision": "fp32"})
    with pytest.raises(BadInputError, match="missing field"):
        read_manifest(tmp_path)
    subnet = {"num_layers": 1, "intermediate_sizes": [32]}
    fields = {"subnet": subnet, "subnet_id": SubnetConfig.from_dict(subnet).id, "precision": "fp32", "device": "cpu",
              "onnx": {"file": "model.onnx"}, "size": {"onnx_bytes": 0}, "verification": {}}  # fmt: skip
    write_manifest(tmp_path, fields)
    for field, value, message in (("device", 7, "device: expected one of"), ("subnet_id", "x", "subnet_id: expected"),
                                  ("size", {}, "size.onnx_bytes: expected an integer >= 0")):  # fmt: skip
        write_manifest(tmp_path, fields | {field: value})
        with pytest.raises(BadInputError, match=f"manifest.json: {message}"):
            read_manifest(tmp_path)
    write_manifest(tmp_path, fields)
    assert read_manifest(tmp_path)["kind"] == KIND and read_manifest(tmp_path)["schema_version"] == SCHEMA_VERSION
    (tmp_path / "model.onnx").write_bytes(b"weights")
    write_manifest(tmp_path, fields)
    with pytest.raises(BadInputError, match="model.onnx: not a readable ONNX model"):
        read_manifest(tmp_path)
    (tmp_path / "model.onnx").write_bytes(_empty_graph())
    write_manifest(tmp_path, fields)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest | {"precision": "int4"}))
    with pytest.raises(BadInputError, match="does not match manifest.sha256"):
        read_manifest(tmp_path)
    (tmp_path / "model.onnx").unlink()
    seal(json.dumps(manifest))
    with pytest.raises(BadInputError, match="listed in manifest.json but missing"):
        read_manifest(tmp_path)
    seal(json.dumps(manifest | {"files": {"../outside.onnx": "0" * 64}}))
    with pytest.raises(BadInputError, match="not a plain relative path"):
        read_manifest(tmp_path)
    seal(json.dumps(manifest | {"schema_version": 1}))
    with pytest.raises(BadInputError, match="schema_version 1, expected 2"):
        read_manifest(tmp_path)


def _empty_graph() -> bytes:
    from onnx import helper

    return helper.make_model(helper.make_graph([], "empty", [], [])).SerializeToString()


def test_onnxruntime_backend_measures_an_exported_subnet(small_checkpoint):
    from llamanas_deploy.profiler.backends import get_backend
    from llamanas_deploy.profiler.base import Shapes
    from llamanas_deploy.profiler.stats import Protocol
    from llamanas_deploy.subnet_config import SubnetConfig

    backend_cls = get_backend("onnxruntime")
    backend_cls.validate("cpu", "int4")
    backend = backend_cls(small_checkpoint, "int4", "cpu", threads=1)
    subnet = SubnetConfig(2, (128, 32))
    shapes = Shapes(batch_size=2, prompt_len=8, context_len=8, gen_len=3)
    backend.warm_up(subnet, shapes)
    result = backend.measure(subnet, shapes, Protocol(warmup=0, repeats=3, max_attempts=1))
    assert backend.exports_made == 1  # exported once, reused by warm-up and measurement
    assert result.weights == "checkpoint" and result.model_bytes > 0
    for figure in (result.prefill_ms, result.decode_ms, result.throughput_tok_s):
        assert figure.spread.median > 0 and figure.spread.n >= 3
    with pytest.raises(BadInputError, match="precision: 'bf16'") as err:
        backend_cls.validate("cpu", "bf16")
    assert err.value.param == "precision"


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _chat_artifact(root, template: str | None):
    from conftest import make_checkpoint, write_byte_tokenizer

    from llamanas_deploy.exporter import ExportSettings, export
    from llamanas_deploy.subnet_config import SubnetConfig

    model = make_checkpoint(root / "model", seed=2)
    write_byte_tokenizer(model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps(config | {"eos_token": "</s>", "chat_template": template}))
    space = root / "space.json"
    space.write_text(json.dumps({"schema_version": 1, "name": "s", "super_network": {"num_hidden_layers": 4,
                     "intermediate_size": 128}, "depth": {"choices": [2, 4]},
                     "layer_dims": {"intermediate_sizes": {"choices": [64, 128]}}}))  # fmt: skip
    export(model, str(space), SubnetConfig(2, (64, 128)), ExportSettings(precision="fp32", max_eval_tokens=128),
           out=root / "artifact", bench=None)  # fmt: skip
    return root / "artifact"


def test_chat_puts_the_message_in_the_artifacts_template_and_answers_from_onnx_runtime(tmp_path, capsys):
    from conftest import run_cli

    from llamanas_deploy.runtime import generate_text, open_artifact

    artifact = _chat_artifact(tmp_path, CHAT_TEMPLATE)
    capsys.readouterr()
    assert open_artifact(artifact).chat_prompt("hi") == "<|user|>hi</s><|assistant|>"
    result = generate_text(artifact, "hi", max_new_tokens=3, chat=True)
    assert result.prompt_tokens == len("<|user|>hi</s><|assistant|>".encode())  # one byte, one token
    code, out, err = run_cli(capsys, "generate", "--artifact", str(artifact), "--chat", "hi", "--max-new-tokens", "2", "--json")
    assert code == 0 and json.loads(out)["prompt_tokens"] == result.prompt_tokens, err
    code, _, err = run_cli(capsys, "generate", "--artifact", str(artifact), "--chat", "hi", "--prompt", "x")
    assert code == 2 and "--prompt" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "template, message",
    [
        (None, "has no chat template"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "its chat template cannot be rendered"),
        ("{% for m in messages %}", "its chat template cannot be rendered"),
    ],
)
def test_a_missing_or_hostile_chat_template_is_refused_in_one_line(tmp_path, capsys, template, message):
    from conftest import run_cli

    artifact = _chat_artifact(tmp_path, template)
    capsys.readouterr()  # what building the model printed
    code, out, err = run_cli(capsys, "generate", "--artifact", str(artifact), "--chat", "hi")
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err and out == ""


def test_generation_stops_at_any_of_several_end_tokens(tmp_path):
    from llamanas_deploy.runtime import Artifact, generate, open_artifact

    opened = open_artifact(_chat_artifact(tmp_path, None))
    decoder = opened.decoder(threads=1)
    free = generate(decoder, [1, 2, 3], 8).tokens  # greedy: the same tokens every time
    first = free.index(free[3])
    ended = generate(decoder, [1, 2, 3], 8, eos_ids={10**6, free[3]})
    assert ended.tokens == free[: first + 1] and ended.stopped_at_eos
    several = Artifact(opened.directory, opened.manifest | {"tokens": {"eos_token_id": [5, 7]}})
    assert several.eos_ids == {5, 7} and Artifact(opened.directory, opened.manifest | {"tokens": {}}).eos_ids == set()
