"""Hostile and careless inputs, command by command (issue 16).

Every case runs a real command in-process on a corpus of malformed files and option values and
asserts what a refusal must look like: exit 2, one line on stderr naming the file or the option,
no traceback, and every pre-existing file byte-identical (nothing created, changed or removed).
Then the regressions of issue 16 one by one, and a property test: no manifest content makes the
runtime open a file outside the artifact directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest

from conftest import make_checkpoint, run_cli, write_byte_tokenizer, write_space
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.onnx_model.artifact import MANIFEST, MANIFEST_HASH, read_manifest
from llamanas_deploy.runtime import open_artifact
from llamanas_deploy.subnet_config import SubnetConfig

SUBNET = SubnetConfig(2, (32, 64))
FOREIGN_DEVICE = "f" * 16


# ---- the world every case runs in -------------------------------------------------------------------
def seal(directory: Path, manifest: dict) -> None:
    """Write `manifest` and a matching manifest.sha256, as someone who edits both would."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (directory / MANIFEST).write_text(text)
    (directory / MANIFEST_HASH).write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  {MANIFEST}\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def artifact_variant(good: Path, path: Path, change: Callable[[Path, dict], dict | None]) -> Path:
    """A copy of the good artifact, changed by `change(dir, manifest)`; a returned manifest is sealed."""
    shutil.copytree(good, path, symlinks=True)
    manifest = json.loads((path / MANIFEST).read_text())
    changed = change(path, manifest)
    if changed is not None:
        seal(path, changed)
    return path


def _outside_onnx(d: Path, m: dict) -> dict:
    shutil.copyfile(d / "model.onnx", d.parent / "other.onnx")
    return m | {"onnx": m["onnx"] | {"file": "../other.onnx"}}


def _linked_onnx(d: Path, m: dict) -> dict:
    outside = d.parent / "linked-target.onnx"
    shutil.copyfile(d / "model.onnx", outside)
    (d / "model.onnx").unlink()
    (d / "model.onnx").symlink_to(outside)
    return m  # the hash still matches: the link is what must be refused


def _unlisted(d: Path, m: dict) -> dict:
    (d / "extra.onnx").write_bytes(b"x")
    return m | {"onnx": m["onnx"] | {"file": "extra.onnx"}}


def _edit(**changes) -> Callable[[Path, dict], None]:
    def change(d: Path, m: dict) -> None:
        (d / MANIFEST).write_text(json.dumps(m | changes, indent=2, sort_keys=True) + "\n")

    return change


ARTIFACTS: dict[str, tuple[Callable[[Path, dict], dict | None], str]] = {
    # name: (how the copy is changed, what the one-line error names)
    "precision-edited": (_edit(precision="int4"), "manifest.json: sha256"),
    "layers-edited": (lambda d, m: _edit(subnet=m["subnet"] | {"num_layers": 7})(d, m), "the manifest changed"),
    "onnx-outside": (_outside_onnx, "'../other.onnx' is not a plain relative path"),
    "onnx-absolute": (lambda d, m: m | {"onnx": m["onnx"] | {"file": "/etc/hostname"}}, "/etc/hostname"),
    "onnx-unlisted": (lambda d, m: _unlisted(d, m), "'extra.onnx' is not covered by a sha256"),
    "onnx-linked-out": (_linked_onnx, "'model.onnx' points outside the artifact"),
    "linked-out-unlisted": (lambda d, m: (d / "data.bin").symlink_to("/etc/hostname"), "data.bin: a link out of the artifact"),
    "tokenizer-outside": (lambda d, m: m | {"tokenizer_files": ["../../tokenizer.json"]}, "../../tokenizer.json"),
    "files-outside": (lambda d, m: m | {"files": m["files"] | {"../x": "0" * 64}}, "'../x'"),
    "digest-not-a-string": (lambda d, m: m | {"files": m["files"] | {"model.onnx": 12}}, "must be a sha256 string"),
    "unlisted-file": (lambda d, m: (d / "notes.onnx.data").write_bytes(b"w") and None, "notes.onnx.data: not listed"),
    "onnx-changed": (lambda d, m: (d / "model.onnx").write_bytes(b"not onnx") and None, "model.onnx: sha256"),
    "onnx-missing": (lambda d, m: (d / "model.onnx").unlink(), "model.onnx: listed in manifest.json but missing"),
    "no-sidecar": (lambda d, m: (d / MANIFEST_HASH).unlink(), "manifest.sha256: missing"),
    "sidecar-garbage": (lambda d, m: (d / MANIFEST_HASH).write_bytes(b"\x00\xff garbage") and None,
                        "manifest.sha256: expected one line"),  # fmt: skip
    "manifest-truncated": (lambda d, m: seal_text(d, (d / MANIFEST).read_text()[:40]), "manifest.json: not valid JSON"),
    "manifest-nan": (lambda d, m: seal_text(d, json.dumps(m | {"size": float("nan")})), "manifest.json: not valid JSON"),
    "manifest-a-list": (lambda d, m: seal_text(d, "[1, 2]"), "not a llamanas artifact manifest"),
    "schema-1": (lambda d, m: (d / MANIFEST_HASH).unlink() or _edit(schema_version=1)(d, m),
                 "schema_version 1 predates it"),  # fmt: skip
    "manifest-a-directory": (lambda d, m: (d / MANIFEST).unlink() or (d / MANIFEST).mkdir(), "not a regular file"),
    "genai-decoder-outside": (lambda d, m: _genai_decoder(d, m, "../model.onnx"), "model.decoder.filename"),
    "genai-custom-ops-library": (lambda d, m: _genai_option(d, m, "custom_ops_library", "libops.so"),
                                 "model.decoder.session_options.custom_ops_library: not a key the toolkit writes"),
    "genai-profiling": (lambda d, m: _genai_option(d, m, "enable_profiling", "trace"), "enable_profiling"),
    "genai-provider-cache-path": (lambda d, m: _genai_option(d, m, "provider_options",
                                                             [{"tensorrt": {"trt_engine_cache_path": "/tmp"}}]),
                                  "is not a provider entry the toolkit writes"),  # fmt: skip
    "genai-cuda-option": (lambda d, m: _genai_option(d, m, "provider_options", [{"cuda": {"gpu_external_alloc": "1"}}]),
                          "model.decoder.session_options.provider_options"),  # fmt: skip
    "genai-top-level-key": (lambda d, m: _genai_edit(d, m, lambda c: c | {"engine": {"dynamic_batching": {}}}),
                            "genai_config.json: engine: not a key"),  # fmt: skip
    "genai-duplicate-key": (lambda d, m: _genai_text(d, m, lambda t: t.replace('"filename":', '"filename": "x.onnx", "filename":', 1)),
                            "given twice"),  # fmt: skip
    "genai-log-id-path": (lambda d, m: _genai_option(d, m, "log_id", "../../log"), "log_id: expected a plain name"),
    "genai-deeply-nested": (lambda d, m: _genai_text(d, m, lambda t: "[" * 100_000 + "]" * 100_000), "nested too deeply"),
    "graph-custom-domain": (lambda d, m: _graph_edit(d, m, _custom_op), "evil.ops::Backdoor, not an op the toolkit emits"),
    "graph-contrib-op-not-emitted": (lambda d, m: _graph_edit(d, m, lambda g: _custom_op(g, "com.microsoft", "Attention")),
                                     "com.microsoft::Attention"),  # fmt: skip
    "graph-external-data-outside": (lambda d, m: _graph_edit(d, m, lambda g: _external(g, "../secret.bin")),
                                    "keeps its data in '../secret.bin'"),  # fmt: skip
    "graph-external-data-unlisted": (lambda d, m: _graph_edit(d, m, lambda g: _external(g, "weights.bin")),
                                     "keeps its data in 'weights.bin'"),  # fmt: skip
    # fields generate and bench read, of the wrong JSON type (re-sealed): refused naming manifest.json and the field
    "tokens-a-string": (lambda d, m: m | {"tokens": "x"}, "manifest.json: tokens: expected an object, got 'x'"),
    "eos-a-string": (lambda d, m: _eos(m, "x"), "manifest.json: tokens.eos_token_id: expected an integer, a list"),
    "eos-a-float-list": (lambda d, m: _eos(m, [1.5]), "manifest.json: tokens.eos_token_id"),
    "size-null": (lambda d, m: m | {"size": None}, "manifest.json: size: expected an object"),
    "onnx-bytes-missing": (lambda d, m: m | {"size": {k: v for k, v in m["size"].items() if k != "onnx_bytes"}},
                           "manifest.json: size.onnx_bytes: expected an integer >= 0, got None"),  # fmt: skip
    "onnx-bytes-negative": (lambda d, m: m | {"size": {"onnx_bytes": -1}}, "manifest.json: size.onnx_bytes"),
    "device-a-number": (lambda d, m: m | {"device": 7}, "manifest.json: device: expected one of ['cpu', 'cuda']"),
    "precision-unknown": (lambda d, m: m | {"precision": "int3"}, "manifest.json: precision: expected one of"),
    "subnet-id-a-number": (lambda d, m: m | {"subnet_id": 7}, "manifest.json: subnet_id: expected"),
    "subnet-edited-resealed": (lambda d, m: m | {"subnet": SubnetConfig(2, (32, 32)).to_dict()},
                               f"manifest.json: subnet_id: expected '{SubnetConfig(2, (32, 32)).id}'"),  # fmt: skip
    "subnet-a-list": (lambda d, m: m | {"subnet": [1]}, "manifest.json: subnet: expected a JSON object"),
    "genai-no-context-length": (lambda d, m: _genai_edit(d, m, _without_context_length),
                                "genai_config.json: model.context_length: expected a positive integer, got None"),
}
BENCH_REFUSED = ("size-null", "onnx-bytes-missing", "device-a-number", "precision-unknown", "subnet-id-a-number",
                 "subnet-edited-resealed")  # fmt: skip


PREDICTED = {  # an artifact whose `predicted` block was edited and re-sealed: bench must not trust it
    "predicted-huge-shapes": ({"shapes": {"batch_size": 100000, "prompt_len": 100000, "context_len": 8, "gen_len": 4}},
                              "predicted.shapes: expected at most"),
    "predicted-threads-million": ({"threads": 10**6}, "predicted.threads: expected an integer from 1"),
    "predicted-no-metric": ({"metric": None}, "predicted.metric: expected one of"),
    "predicted-value-text": ({"value": "fast"}, "predicted.value: expected a positive number"),
    "predicted-shape-text": ({"shapes": {"batch_size": "1", "prompt_len": 8, "context_len": 8, "gen_len": 4}},
                             "predicted.shapes.batch_size"),
    "predicted-a-list": (None, "predicted: expected an object or null"),
}  # fmt: skip
PREDICTION = {"metric": "decode_ms", "value": 1.0, "threads": 1, "clock": "wall", "statistic": "best",
              "shapes": {"batch_size": 1, "prompt_len": 8, "context_len": 8, "gen_len": 4}}  # fmt: skip


def _predicted(change: dict | None) -> Callable[[Path, dict], dict]:
    return lambda d, m: m | {"predicted": [1, 2] if change is None else PREDICTION | change}


def seal_text(directory: Path, text: str) -> None:
    (directory / MANIFEST).write_text(text)
    (directory / MANIFEST_HASH).write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  {MANIFEST}\n")


def _genai_decoder(d: Path, m: dict, filename: str) -> dict:
    config = json.loads((d / "genai_config.json").read_text())
    config["model"]["decoder"]["filename"] = filename
    (d / "genai_config.json").write_text(json.dumps(config))
    return m | {"files": m["files"] | {"genai_config.json": sha256(d / "genai_config.json")}}


def _genai_edit(d: Path, m: dict, change: Callable[[dict], dict]) -> dict:
    config = change(json.loads((d / "genai_config.json").read_text()))
    return _genai_text(d, m, lambda _: json.dumps(config))


def _genai_text(d: Path, m: dict, change: Callable[[str], str]) -> dict:
    (d / "genai_config.json").write_text(change((d / "genai_config.json").read_text()))
    return m | {"files": m["files"] | {"genai_config.json": sha256(d / "genai_config.json")}}


def _genai_option(d: Path, m: dict, key: str, value: object) -> dict:
    """A re-sealed artifact whose genai_config sets `session_options[key]` (a library it ships is listed too)."""
    if isinstance(value, str) and value.endswith(".so"):
        (d / value).write_bytes(b"\x7fELF not really")
        m = m | {"files": m["files"] | {value: sha256(d / value)}}
    return _genai_edit(d, m, lambda c: _set_option(c, key, value))


def _without_context_length(config: dict) -> dict:
    return config | {"model": {k: v for k, v in config["model"].items() if k != "context_length"}}


def _eos(m: dict, value: object) -> dict:
    return m | {"tokens": m["tokens"] | {"eos_token_id": value}}


def _tokenizer_config(d: Path, m: dict, change: dict) -> dict:
    path = d / "tokenizer_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | change))
    return m | {"files": m["files"] | {"tokenizer_config.json": sha256(path)}}


def _set_option(config: dict, key: str, value: object) -> dict:
    config["model"]["decoder"]["session_options"][key] = value
    return config


def _graph_edit(d: Path, m: dict, change: Callable) -> dict:
    import onnx

    model = onnx.load(str(d / "model.onnx"))
    change(model.graph)
    onnx.save(model, str(d / "model.onnx"))
    return m | {"files": m["files"] | {"model.onnx": sha256(d / "model.onnx")}}


def _custom_op(graph, domain: str = "evil.ops", op: str = "Backdoor") -> None:
    from onnx import helper

    graph.node.append(helper.make_node(op, [graph.input[0].name], ["unused"], name="injected", domain=domain))


def _external(graph, location: str) -> None:
    from onnx import TensorProto

    tensor = graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _shapes(body: dict, **change) -> None:
    body["metadata"]["shapes"] = body["metadata"]["shapes"] | change


PREDICTORS: dict[str, tuple[Callable[[dict], None], str]] = {  # re-sealed predictor files: (change, what is named)
    "features-a-list": (lambda b: b.update(features=[1]), "features: expected an object, got [1]"),
    "feature-shape-text": (lambda b: b["features"]["shapes"].update(prompt_len="x"),
                           "features.shapes.prompt_len: expected a positive integer, got 'x'"),  # fmt: skip
    "model-shape-float": (lambda b: b["features"]["model_shape"].update(num_hidden_layers=1.5),
                          "features.model_shape: num_hidden_layers: expected a positive integer, got 1.5"),  # fmt: skip
    "prior-coef-text": (lambda b: b["prior"].update(coef="x"), "prior.coef: expected a list of"),
    "prior-coef-nested": (lambda b: b["prior"]["coef"].__setitem__(0, [1]), "prior.coef: expected a list of"),
    "metric-a-list": (lambda b: b["metadata"].update(metric=[1]), "metadata.metric: expected one of"),
    "metric-an-object": (lambda b: b["metadata"].update(metric={"a": 1}), "metadata.metric: expected one of"),
    "metadata-shape-text": (lambda b: _shapes(b, batch_size="x"), "metadata.shapes.batch_size: expected a positive"),
    "metadata-shapes-a-list": (lambda b: b["metadata"].update(shapes=[1]), "metadata.shapes: expected an object with"),
    "metadata-threads-text": (lambda b: b["metadata"].update(threads="x"), "metadata.threads: expected a positive"),
    "metadata-clock-number": (lambda b: b["metadata"].update(clock=7), "metadata.clock: expected one of ['wall'"),
    "metadata-statistic-number": (lambda b: b["metadata"].update(statistic=7), "metadata.statistic: expected one of"),
    "space-edited": (lambda b: b["features"]["space"]["depth"].update(choices=[3, 4]),
                     "metadata.space_id 'small-test-"),  # fmt: skip
}
EXPORT_PREDICTORS = ("metadata-shape-text", "metadata-threads-text", "metadata-clock-number",
                     "metadata-statistic-number", "space-edited", "features-a-list")  # fmt: skip
MODEL_CONFIGS = {  # config.json fields that int() or bool() would silently truncate: (field, value)
    "layers-float": ("num_hidden_layers", 1.5),
    "layers-true": ("num_hidden_layers", True),
    "hidden-true": ("hidden_size", True),
    "intermediate-float": ("intermediate_size", 127.5),
    "vocab-text": ("vocab_size", "256"),
    "head-dim-float": ("head_dim", 1.5),
    "kv-heads-true": ("num_key_value_heads", True),
    "tied-text": ("tie_word_embeddings", "no"),
}


def predictor_variant(good: Path, path: Path, change: Callable[[dict], None]) -> Path:
    """A copy of the good predictor file, changed by `change(body)`, its sha256 recomputed as an editor would."""
    from llamanas_deploy.predict.predictor_file import _digest

    body = json.loads(good.read_text())
    del body["sha256"]
    change(body)
    path.write_text(json.dumps(body | {"sha256": _digest(body)}))
    return path


def search_args(w: SimpleNamespace) -> list[str]:
    """A small search of cheap measures only (size and predicted latency): its ledger holds both."""
    return ["search", "--model", str(w.model), "--space", str(w.space), "--objective", "size", "--objective",
            f"latency:{w.predictor}", "--population", "2", "--evaluations", "4"]  # fmt: skip


def _size_value(value: object) -> Callable[[Path], None]:
    return lambda d: _ledger_line(d, lambda r: r["values"].update(fp16_gib=value))


def _ledger_line(path: Path, change: Callable[[dict], None]) -> None:
    """Change the first record of the search's evaluations.jsonl."""
    first, rest = (path / "evaluations.jsonl").read_text().split("\n", 1)
    record = json.loads(first)
    change(record)
    (path / "evaluations.jsonl").write_text(json.dumps(record) + "\n" + rest)


SEARCHES: dict[str, tuple[Callable[[Path], None], str]] = {  # an edited search directory, resumed: (change, named)
    "size-text": (_size_value("x"), "evaluations.jsonl:1: values.fp16_gib: expected a finite number, got 'x'"),
    "size-null": (_size_value(None), "evaluations.jsonl:1: values.fp16_gib"),
    "size-true": (_size_value(True), "evaluations.jsonl:1: values.fp16_gib"),
    "size-a-list": (_size_value([1]), "evaluations.jsonl:1: values.fp16_gib"),
    "index-text": (lambda d: _ledger_line(d, lambda r: r.update(index="x")), "evaluations.jsonl:1: index: expected an"),
    "settings-edited": (lambda d: (d / "search.json").write_text(json.dumps(json.loads((d / "search.json").read_text())
                                                                            | {"seed": "x"})),
                        "search.json: records a search with different settings (seed differ)"),  # fmt: skip
    "settings-a-list": (lambda d: (d / "search.json").write_text("[1]"), "search.json: expected an object, got [1]"),
}


def build_search(w: SimpleNamespace, out: Path) -> None:
    import contextlib
    import io

    from llamanas_deploy.cli import main

    with pytest.raises(SystemExit) as done, contextlib.redirect_stdout(io.StringIO()):
        main([*search_args(w), "--out", str(out)])
    assert done.value.code == 0


BAD_JSON = {
    "truncated.json": '{"schema_version": 1, "name": "x", "depth": {"choi',
    "garbage.json": "\x00\x01binary\xffgarbage",
    "nan.json": '{"num_layers": NaN, "intermediate_sizes": [32]}',
    "empty.json": "",
    "list.json": "[1, 2, 3]",
}


def build_world(root: Path) -> SimpleNamespace:
    from llamanas_deploy.exporter import ExportSettings, export
    from llamanas_deploy.model.families import read_shape
    from llamanas_deploy.predict.estimator import LatencyPredictor
    from llamanas_deploy.predict.features import FeatureBuilder
    from llamanas_deploy.profiler.fingerprint import current_fingerprint
    from llamanas_deploy.space import load_space

    w = SimpleNamespace(root=root)
    w.model = make_checkpoint(root / "model")
    write_byte_tokenizer(w.model)
    (w.model / "heldout.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    w.space = write_space(root / "space.json")
    w.artifact = root / "artifact"
    w.torch_threads = __import__("torch").get_num_threads()  # the figures in the manifest depend on it
    export(w.model, str(w.space), SUBNET, ExportSettings(precision="fp32", max_eval_tokens=128), out=w.artifact, bench=None)
    space = load_space(str(w.space))
    configs = space.sample_random(16, seed=0)
    y = [0.05 + 0.1 * c.num_layers + 0.001 * sum(c.intermediate_sizes) for c in configs]
    features = FeatureBuilder(space, read_shape(w.model), {"batch_size": 1, "prompt_len": 8, "context_len": 8, "gen_len": 4})
    provenance = {"target": "t", "fingerprint_id": current_fingerprint()["fingerprint_id"], "backend": "torch",
                  "precision": "fp32", "device": "cpu", "threads": 1, "clock": "wall", "statistic": "best"}  # fmt: skip
    w.predictor = LatencyPredictor(features, param_grid={"max_depth": (2,), "num_boost_round": (5,)}, cv_folds=2).fit(
        configs, y, provenance=provenance
    ).save(root / "predictor.json")
    bad = root / "bad"
    bad.mkdir()
    for name, text in BAD_JSON.items():
        (bad / name).write_bytes(text.encode("utf-8", "surrogateescape") if "\xff" not in text else b"\x00\x01\xff\xfe")
    (bad / "loop.json").symlink_to(bad / "loop.json")  # a link to itself
    os.mkfifo(bad / "fifo.json")  # reading it would block forever
    (bad / "a-directory.json").mkdir()
    spaces = {
        "negative": {"depth": {"choices": [-2, 2]}},
        "huge": {"super_network": {"num_hidden_layers": 10**30, "intermediate_size": 128}},
        "wrong-type": {"layer_dims": {"intermediate_sizes": {"choices": ["32", "64"]}}},
        "stale-id": {"id": "small-test-00000000"},
        "unknown-key": {"extra": 1},
        "uncountable": {"super_network": {"num_hidden_layers": 4096, "intermediate_size": 4096},
                        "depth": {"choices": [4096]}, "layer_dims": {"intermediate_sizes": {"choices": list(range(16, 3200, 16))}}},
    }
    for name, change in spaces.items():
        write_space(bad / f"space-{name}.json", **change)
    predictor = json.loads(w.predictor.read_text())
    predictor["metadata"]["space_id"] = "tiny-00000000"
    (bad / "predictor-tampered.json").write_text(json.dumps(predictor))
    (bad / "predictor-truncated.json").write_text(w.predictor.read_text()[:100])
    profile = root / "profile-foreign"  # records of another device, no fingerprint.json (issue 16 case 6)
    profile.mkdir()
    shipped = next(Path(__file__).resolve().parent.parent.glob("hardware_profiles/*/measurements.jsonl"))
    record = json.loads(shipped.read_text().split("\n", 1)[0]) | {"fingerprint_id": FOREIGN_DEVICE}
    (profile / "measurements.jsonl").write_text(json.dumps(record) + "\n")
    (root / "profile-garbage").mkdir()
    (root / "profile-garbage" / "fingerprint.json").write_text("{{{")
    (root / "user-dir").mkdir()
    (root / "user-dir" / "notes.txt").write_text("mine, not the toolkit's")
    (root / "a-file").write_text("a file, not a directory")
    (root / "front.json").write_text(json.dumps({"schema_version": 1, "front": [{"subnet": SUBNET.to_dict()}]}))
    for name, (change, _) in ARTIFACTS.items():
        artifact_variant(w.artifact, root / "artifacts" / name / "a", change)
    for name, (change, _) in PREDICTED.items():
        artifact_variant(w.artifact, root / "artifacts" / name / "a", _predicted(change))
    for name, template in (("chat-template-a-number", 7), ("chat-template-a-list", [{"name": "x"}])):
        artifact_variant(w.artifact, root / "artifacts" / name / "a",
                         lambda d, m, t=template: _tokenizer_config(d, m, {"chat_template": t}))  # fmt: skip
    for name, (change, _) in PREDICTORS.items():
        predictor_variant(w.predictor, bad / f"predictor-{name}.json", change)
    # valid as a file (fitted on a bigger machine), but a bench here cannot use its thread count
    predictor_variant(w.predictor, bad / "predictor-many-threads.json", lambda b: b["metadata"].update(threads=10**6))
    for name, (field, value) in MODEL_CONFIGS.items():
        shutil.copytree(w.model, bad / f"model-{name}", ignore=shutil.ignore_patterns("*.safetensors"))
        config = bad / f"model-{name}" / "config.json"
        config.write_text(json.dumps(json.loads(config.read_text()) | {field: value}))
    build_search(w, root / "search")
    for name, (change, _) in SEARCHES.items():
        shutil.copytree(root / "search", root / "searches" / name)
        change(root / "searches" / name)
    return w


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    return build_world(tmp_path_factory.mktemp("hostile"))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root`: links by target, directories by name, files by content and mode."""
    seen = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(here) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                seen[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                seen[str(path)] = ("file", sha256(path), info.st_mode)
            else:
                seen[str(path)] = ("other", info.st_mode)
    return seen


def assert_refused(result: tuple[int, str, str], *fragments: str) -> None:
    code, out, err = result
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error") and "Traceback" not in err, err
    assert out == "", out
    for fragment in fragments:
        assert fragment in err, err


# ---- the corpus ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[SimpleNamespace], list[str]]
    names: Callable[[SimpleNamespace], str] | str  # what the one line must name (a file or an option)


def _w(attr: str, *parts: str) -> Callable[[SimpleNamespace], str]:
    return lambda w: str(Path(getattr(w, attr), *parts))


BAD = lambda name: lambda w: str(w.root / "bad" / name)  # noqa: E731
NEW = lambda name: lambda w: str(w.root / "new" / name)  # noqa: E731 - never created by a refused command
ART = lambda name: lambda w: str(w.root / "artifacts" / name / "a")  # noqa: E731


def cli(*parts) -> Callable[[SimpleNamespace], list[str]]:
    return lambda w: [p(w) if callable(p) else p for p in parts]


MODEL, SPACE, ARTIFACT, PREDICTOR = _w("model"), _w("space"), _w("artifact"), _w("predictor")
SUB = json.dumps(SUBNET.to_dict())


def number_cases() -> list[Case]:
    """Every float and thread option against NaN, infinities, values outside its meaning, wrong types."""
    too_many = str((os.cpu_count() or 1) + 1)
    cases = []
    for value in ("nan", "inf", "-inf", "0", "-1", "1e400"):
        cases.append(Case(f"search-max-latency-{value}", cli("search", "--max-latency", value, "--out", NEW("s")),
                          "--max-latency"))  # fmt: skip
    for value in ("nan", "-inf", "0", "-5"):
        cases.append(Case(f"run-max-latency-{value}", cli("run", "--max-latency", value, "--out", NEW("r")), "--max-latency"))
    for value in ("nan", "inf", "0.5"):
        cases.append(Case(f"run-speedup-{value}", cli("run", "--speedup", value, "--out", NEW("r")), "--speedup"))
    cases += [
        Case("search-max-size-nan", cli("search", "--max-size", "nan", "--out", NEW("s")), "--max-size"),
        Case("search-max-size-text", cli("search", "--max-size", "small", "--out", NEW("s")), "--max-size"),
        Case("profile-max-cv-nan", cli("profile", "--max-cv", "nan", "--target", "t", "--out", NEW("p")), "--max-cv"),
        Case("profile-max-cv-inf", cli("profile", "--max-cv", "inf", "--target", "t", "--out", NEW("p")), "--max-cv"),
        Case("profile-max-cv-0", cli("profile", "--max-cv", "0", "--target", "t", "--out", NEW("p")), "--max-cv"),
        Case("profile-samples-0", cli("profile", "--samples", "0", "--target", "t", "--out", NEW("p")), "--samples"),
        Case("profile-repeats-1", cli("profile", "--repeats", "1", "--target", "t", "--out", NEW("p")), "--repeats"),
        Case("profile-batch-0", cli("profile", "--batch-size", "0", "--target", "t", "--out", NEW("p")), "--batch-size"),
        Case("generate-temperature-nan", cli("generate", "--artifact", ARTIFACT, "--prompt", "x", "--temperature", "nan"),
             "--temperature"),
        Case("generate-temperature-inf", cli("generate", "--artifact", ARTIFACT, "--prompt", "x", "--temperature", "inf"),
             "--temperature"),
        Case("generate-temperature-negative", cli("generate", "--artifact", ARTIFACT, "--prompt", "x", "--temperature",
                                                  "-1"), "--temperature"),
        Case("generate-top-k-negative", cli("generate", "--artifact", ARTIFACT, "--prompt", "x", "--top-k", "-1"), "--top-k"),
        Case("generate-max-new-0", cli("generate", "--artifact", ARTIFACT, "--prompt", "x", "--max-new-tokens", "0"),
             "--max-new-tokens"),
        Case("fit-test-fraction-nan", cli("fit", "--profile", "p", "--out", NEW("f.json"), "--test-fraction", "nan"),
             "--test-fraction"),
        Case("fit-test-fraction-1", cli("fit", "--profile", "p", "--out", NEW("f.json"), "--test-fraction", "1"),
             "--test-fraction"),
        Case("export-max-ppl-nan", cli("export", "--subnet", SUB, "--out", NEW("e"), "--max-ppl-increase", "nan"),
             "--max-ppl-increase"),
        Case("finetune-lr-nan", cli("finetune", "--lr", "nan", "--out", NEW("ft")), "--lr"),
        Case("finetune-lr-0", cli("finetune", "--lr", "0", "--out", NEW("ft")), "--lr"),
        Case("finetune-weight-decay-negative", cli("finetune", "--weight-decay", "-1", "--out", NEW("ft")),
             "--weight-decay"),
        Case("space-sample-n-0", cli("space", "sample", "tiny", "-n", "0"), "--num"),
    ]  # fmt: skip
    threads = {
        "profile": cli("profile", "--target", "t", "--out", NEW("p"), "--threads"),
        "generate": cli("generate", "--artifact", ARTIFACT, "--prompt", "x", "--threads"),
        "bench": cli("bench", "--artifact", ARTIFACT, "--threads"),
        "export": cli("export", "--subnet", SUB, "--out", NEW("e"), "--threads"),
        "run": cli("run", "--out", NEW("r"), "--threads"),
        "finetune": cli("finetune", "--out", NEW("ft"), "--threads"),
    }
    for command, args in threads.items():
        for value in ("0", too_many, "1000000", "two"):
            cases.append(Case(f"{command}-threads-{value}", lambda w, a=args, v=value: a(w) + [v], "--threads"))
    return cases


def file_cases() -> list[Case]:
    """Malformed files where a space, a sub-network, a profile, a predictor or an artifact is expected."""
    cases = []
    for name in ("truncated.json", "garbage.json", "empty.json", "list.json", "loop.json", "a-directory.json",
                 "space-negative.json", "space-huge.json", "space-wrong-type.json", "space-stale-id.json",
                 "space-unknown-key.json", "space-uncountable.json"):  # fmt: skip
        cases.append(Case(f"space-show-{name}", cli("space", "show", BAD(name)), BAD(name)))
    for name in ("truncated.json", "space-negative.json", "space-stale-id.json"):
        cases.append(Case(f"subnet-stats-space-{name}", cli("subnet", "stats", "--space", BAD(name), "--subnet",
                                                            "largest"), BAD(name)))  # fmt: skip
        cases.append(Case(f"export-space-{name}", cli("export", "--model", MODEL, "--space", BAD(name), "--subnet", SUB,
                                                      "--out", NEW("e")), BAD(name)))  # fmt: skip
    subnets = {
        "truncated": '{"num_layers": 2, "intermediate_sizes": [32',
        "nan": '{"num_layers": NaN, "intermediate_sizes": [32, 32]}',
        "negative": '{"num_layers": -2, "intermediate_sizes": []}',
        "huge": '{"num_layers": 1000000000, "intermediate_sizes": [32]}',
        "wrong-type": '{"num_layers": "2", "intermediate_sizes": [32, 32]}',
    }
    for name, text in subnets.items():
        cases.append(Case(f"subnet-stats-{name}", cli("subnet", "stats", "--model", MODEL, "--space", SPACE,
                                                      "--subnet", text), "inline sub-network JSON"))  # fmt: skip
    cases.append(Case("subnet-stats-outside-space", cli("subnet", "stats", "--model", MODEL, "--space", SPACE, "--subnet",
                                                        '{"num_layers": 2, "intermediate_sizes": [32, 100]}'), "--subnet"))
    for name in ("garbage.json", "nan.json", "loop.json"):
        cases.append(Case(f"subnet-file-{name}", cli("subnet", "stats", "--model", MODEL, "--space", SPACE, "--subnet",
                                                     BAD(name)), BAD(name)))  # fmt: skip
    cases += [
        Case("front-index-out-of-range", cli("export", "--model", MODEL, "--space", SPACE, "--subnet",
                                             lambda w: f"{w.root / 'front.json'}#9", "--out", NEW("e")), "front.json"),
        Case("front-index-negative", cli("subnet", "stats", "--model", MODEL, "--space", SPACE, "--subnet",
                                         lambda w: f"{w.root / 'front.json'}#-1"), "front.json"),
        Case("extract-into-user-dir", cli("subnet", "extract", "--model", MODEL, "--space", SPACE, "--subnet", SUB,
                                          "--out", _w("root", "user-dir")), "user-dir"),
        Case("export-into-user-dir", cli("export", "--model", MODEL, "--space", SPACE, "--subnet", SUB, "--out",
                                         _w("root", "user-dir")), "user-dir"),
        Case("export-into-a-file", cli("export", "--model", MODEL, "--space", SPACE, "--subnet", SUB, "--out",
                                       _w("root", "a-file")), "a-file"),
        Case("export-wrong-space", cli("export", "--model", MODEL, "--space", "tiny", "--subnet", "largest", "--out",
                                       NEW("e"), "--quiet"), "model"),
        Case("export-predictor-garbage", cli("export", "--model", MODEL, "--space", SPACE, "--subnet", SUB, "--out",
                                             NEW("e"), "--predictor", BAD("garbage.json")), "garbage.json"),
        Case("export-predictor-tampered", cli("export", "--model", MODEL, "--space", SPACE, "--subnet", SUB, "--out",
                                              NEW("e"), "--predictor", BAD("predictor-tampered.json")),
             "predictor-tampered.json"),
        Case("predict-truncated", cli("predict", "--predictor", BAD("predictor-truncated.json"), "--subnet", SUB),
             "predictor-truncated.json"),
        Case("predict-wrong-space", cli("predict", "--predictor", PREDICTOR, "--subnet", "largest", "--space", "tiny"),
             "space"),
        Case("predict-subnet-nan", cli("predict", "--predictor", PREDICTOR, "--subnet", BAD("nan.json")), "nan.json"),
        Case("fit-profile-foreign", cli("fit", "--profile", _w("root", "profile-foreign"), "--out", NEW("f.json")),
             "profile-foreign"),
        Case("fit-profile-garbage", cli("fit", "--profile", _w("root", "profile-garbage"), "--out", NEW("f.json")),
             "fingerprint.json"),
        Case("fit-profile-missing", cli("fit", "--profile", _w("root", "no-such-profile"), "--out", NEW("f.json")),
             "no-such-profile"),
        Case("fit-out-under-a-file", cli("fit", "--profile", _w("root", "profile-foreign"), "--out",
                                         _w("root", "a-file", "p.json")), "--out"),
        Case("profile-into-user-dir", cli("profile", "--model", MODEL, "--space", SPACE, "--target", "t", "--out",
                                          _w("root", "user-dir")), "user-dir"),
        Case("profile-foreign-records", cli("profile", "--model", MODEL, "--space", SPACE, "--target", "t", "--out",
                                            _w("root", "profile-foreign"), "--samples", "2"), FOREIGN_DEVICE),
        Case("profile-target-dotdot", cli("profile", "--target", "../escape", "--out", NEW("p")), "--target"),
        Case("profile-wrong-space", cli("profile", "--model", MODEL, "--space", "tiny", "--target", "t", "--out",
                                        NEW("p")), "tiny"),
        Case("profile-device-tpu", cli("profile", "--device", "tpu", "--target", "t", "--out", NEW("p")), "--device"),
        Case("search-into-user-dir", cli("search", "--model", MODEL, "--space", SPACE, "--objective", "accuracy",
                                         "--objective", "size", "--out", _w("root", "user-dir")), "user-dir"),
        Case("search-predictor-garbage", cli("search", "--model", MODEL, "--space", SPACE, "--objective",
                                             lambda w: f"latency:{w.root / 'bad' / 'garbage.json'}", "--out", NEW("s")),
             "garbage.json"),
        Case("run-into-user-dir", cli("run", "--out", _w("root", "user-dir")), "user-dir"),
        Case("run-wrong-space", cli("run", "--model", MODEL, "--space", BAD("space-huge.json"), "--out", NEW("r")),
             "space-huge.json"),
        Case("evaluate-space-garbage", cli("evaluate", "--model", MODEL, "--space", BAD("garbage.json"), "--subnet",
                                           "largest"), "garbage.json"),
        Case("targets-a-file", cli("targets", "--dir", _w("root", "a-file")), "a-file"),
    ]  # fmt: skip
    for name, (_, fragment) in ARTIFACTS.items():
        cases.append(Case(f"generate-artifact-{name}", cli("generate", "--artifact", ART(name), "--prompt", "x"),
                          fragment))  # fmt: skip
    for name in ("precision-edited", "onnx-outside", "onnx-linked-out", "unlisted-file", *BENCH_REFUSED):
        cases.append(Case(f"bench-artifact-{name}", cli("bench", "--artifact", ART(name)), ARTIFACTS[name][1]))
    for name in ("chat-template-a-number", "chat-template-a-list"):
        cases.append(Case(f"generate-chat-{name}", cli("generate", "--artifact", ART(name), "--chat", "hi"),
                          lambda w, n=name: f"{ART(n)(w)}/tokenizer_config.json: chat_template: expected a string"))
    for name, (_, fragment) in PREDICTORS.items():
        predictor = BAD(f"predictor-{name}.json")
        cases.append(Case(f"predict-{name}", cli("predict", "--predictor", predictor, "--subnet", SUB),
                          lambda w, p=predictor, f=fragment: f"{p(w)}: {f}"))  # fmt: skip
    for name in EXPORT_PREDICTORS:
        predictor = BAD(f"predictor-{name}.json")
        cases.append(Case(f"export-predictor-{name}", cli("export", "--model", MODEL, "--space", SPACE, "--subnet", SUB,
                                                          "--out", NEW("e"), "--predictor", predictor),
                          lambda w, p=predictor, n=name: f"{p(w)}: {PREDICTORS[n][1]}"))  # fmt: skip
    cases.append(Case("export-predictor-more-threads-than-cores",
                      cli("export", "--model", MODEL, "--space", SPACE, "--subnet", SUB, "--out", NEW("e"), "--predictor",
                          BAD("predictor-many-threads.json")),
                      lambda w: f"{BAD('predictor-many-threads.json')(w)} (the prediction it gives): predicted.threads"))
    edited = lambda w: f"latency:{BAD('predictor-space-edited.json')(w)}"  # noqa: E731
    cases.append(Case("search-predictor-space-edited", cli("search", "--model", MODEL, "--space", SPACE, "--objective",
                                                           "size", "--objective", edited, "--out", NEW("s")),
                      "predictor-space-edited.json: metadata.space_id"))  # fmt: skip
    for name, (field, _) in MODEL_CONFIGS.items():
        cases.append(Case(f"subnet-stats-config-{name}", cli("subnet", "stats", "--model", BAD(f"model-{name}"),
                                                             "--space", SPACE, "--subnet", SUB),
                          f"model-{name}/config.json: {field}: expected"))  # fmt: skip
    for name, (_, fragment) in SEARCHES.items():
        out = lambda w, n=name: w.root / "searches" / n  # noqa: E731
        cases.append(Case(f"search-resume-{name}", lambda w, o=out: [*search_args(w), "--out", str(o(w))],
                          lambda w, o=out, f=fragment: f"{o(w)}/{f}"))  # fmt: skip
    for name, (_, fragment) in PREDICTED.items():
        cases.append(Case(f"bench-artifact-{name}", cli("bench", "--artifact", ART(name)), fragment))
    cases += [
        Case("fit-out-over-a-search-front", cli("fit", "--profile", _w("root", "profile-foreign"), "--out",
                                                _w("root", "front.json")), "front.json: exists and is not a predictor file"),
        Case("subnet-a-fifo", cli("subnet", "stats", "--model", MODEL, "--space", SPACE, "--subnet", BAD("fifo.json")),
             "fifo.json: cannot read sub-network configs (a FIFO)"),
        Case("space-a-fifo", cli("space", "show", BAD("fifo.json")), "fifo.json"),
        Case("evaluate-data-a-fifo", cli("evaluate", "--model", MODEL, "--space", SPACE, "--subnet", SUB, "--data",
                                         BAD("fifo.json")), "fifo.json: cannot read data file (a FIFO)"),
        Case("front-index-superscript-digit", cli("subnet", "stats", "--model", MODEL, "--space", SPACE, "--subnet",
                                                  lambda w: f"{w.root / 'front.json'}#\u00b2"), "must be an index"),
        Case("front-index-arabic-digit", cli("subnet", "stats", "--model", MODEL, "--space", SPACE, "--subnet",
                                             lambda w: f"{w.root / 'front.json'}#\u0663"), "must be an index"),
        Case("generate-no-artifact", cli("generate", "--artifact", _w("root", "user-dir"), "--prompt", "x"), "user-dir"),
        Case("generate-artifact-a-file", cli("generate", "--artifact", _w("root", "a-file"), "--prompt", "x"), "a-file"),
        Case("generate-artifact-dotdot", cli("generate", "--artifact", lambda w: f"{w.root}/artifact/../nothing",
                                             "--prompt", "x"), "nothing"),
        Case("generate-more-tokens-than-positions", cli("generate", "--artifact", ARTIFACT, "--prompt", "x",
                                                        "--max-new-tokens", "100000"), "--max-new-tokens"),
        Case("export-negative-ppl-budget", cli("export", "--model", MODEL, "--space", SPACE, "--subnet", SUB, "--out",
                                               NEW("e"), "--precision", "int8", "--max-ppl-increase", "-5"),
             "--max-ppl-increase"),
    ]  # fmt: skip
    under_a_file = {  # --out below a regular file: refused before anything slow, naming the file in the way
        "export": ("export", "--model", MODEL, "--space", SPACE, "--subnet", SUB),
        "extract": ("subnet", "extract", "--model", MODEL, "--space", SPACE, "--subnet", SUB),
        "profile": ("profile", "--model", MODEL, "--space", SPACE, "--target", "t", "--samples", "2"),
        "search": ("search", "--model", MODEL, "--space", SPACE, "--objective", "accuracy", "--objective", "size"),
        "run": ("run", "--model", MODEL, "--space", SPACE),
        "prepare": ("prepare", "--model", MODEL),
    }
    for name, args in under_a_file.items():
        cases.append(Case(f"{name}-out-under-a-file", cli(*args, "--out", _w("root", "a-file", "x")), "a-file is a file"))
    newline = lambda w: str(w.root / "new" / "line\nbreak")  # noqa: E731 - shown escaped, on the one line
    cases += [
        Case("subnet-file-newline-in-name", cli("subnet", "stats", "--model", MODEL, "--space", SPACE, "--subnet", newline),
             "line\\nbreak: cannot read"),
        Case("generate-newline-in-name", cli("generate", "--artifact", newline, "--prompt", "x"), "line\\nbreak"),
        Case("export-newline-out-under-a-file", cli("export", "--model", MODEL, "--space", SPACE, "--subnet", SUB, "--out",
                                                    lambda w: str(w.root / "a-file" / "x\ny")), "a-file is a file"),
    ]  # fmt: skip
    return cases


CASES = number_cases() + file_cases()


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_in_one_line_and_changes_nothing(world, capsys, case):
    before = snapshot(world.root)
    names = case.names(world) if callable(case.names) else case.names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a library's own warning is not the refusal under test
        result = run_cli(capsys, *case.args(world))
    assert_refused(result, names)
    assert snapshot(world.root) == before


# ---- the 15 regressions of issue 16, each with its exact input ------------------------------------------
def test_1_onnx_file_outside_the_artifact_is_refused_and_never_run(world, capsys):
    artifact = Path(ART("onnx-outside")(world))
    assert (artifact.parent / "other.onnx").is_file()  # a runnable model, there for the taking
    assert_refused(run_cli(capsys, "generate", "--artifact", str(artifact), "--prompt", "x"), "../other.onnx")


@pytest.mark.parametrize("name", ["precision-edited", "layers-edited"])
@pytest.mark.parametrize("command", ["generate", "bench"])
def test_2_an_edited_manifest_is_refused_by_every_reader(world, capsys, name, command):
    extra = ["--prompt", "x"] if command == "generate" else []
    artifact = ART(name)(world)
    assert_refused(run_cli(capsys, command, "--artifact", artifact, *extra), "manifest.json: sha256", "manifest.sha256")
    with pytest.raises(BadInputError, match="the manifest changed after export"):
        open_artifact(artifact)


@pytest.mark.parametrize("value", ["nan", "0", "-1", "-inf"])
def test_3_search_refuses_a_non_finite_or_impossible_budget(world, capsys, value):
    out = world.root / "new" / "search"
    assert_refused(run_cli(capsys, "search", "--model", str(world.model), "--space", str(world.space),
                           f"--max-latency={value}", "--out", str(out)), "--max-latency")  # fmt: skip
    assert not out.exists()


def test_3_run_and_profile_refuse_nan(world, capsys):
    assert_refused(run_cli(capsys, "run", "--max-latency=nan", "--out", str(world.root / "new" / "r")), "--max-latency")
    assert_refused(run_cli(capsys, "profile", "--max-cv", "nan", "--target", "t", "--out", str(world.root / "new")),
                   "--max-cv")  # fmt: skip


def test_3_no_nan_reaches_a_measurement_file(tmp_path):
    from llamanas_deploy.profiler.stats import Protocol
    from llamanas_deploy.profiler.store import REQUIRED_FIELDS, ProfileWriter, current_fingerprint

    with pytest.raises(ValueError, match="max_cv > 0"):
        Protocol(max_cv=float("nan"))
    with ProfileWriter.open(tmp_path / "p", "t", current_fingerprint()) as writer:
        record = {k: 1 for k in REQUIRED_FIELDS} | {"protocol": {"max_cv": float("nan")}}
        with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
            writer.append(record)
    assert not (tmp_path / "p" / "measurements.jsonl").exists()


def test_4_thread_counts_above_the_logical_cores_are_refused(world, capsys):
    from llamanas_deploy.concepts import check_threads
    from llamanas_deploy.profiler import ProfileSettings
    from llamanas_deploy.profiler.runner import Measurer
    from llamanas_deploy.runtime import session_options

    assert_refused(run_cli(capsys, "profile", "--threads", "1000000", "--target", "t"), "--threads", "logical cores")
    assert_refused(run_cli(capsys, "generate", "--artifact", str(world.artifact), "--prompt", "x", "--threads", "100000"),
                   "--threads", "logical cores")  # fmt: skip
    cores = os.cpu_count()
    assert check_threads(cores) == cores
    # a profile checks the count where it measures (this machine, or the Ray node it runs on)
    for library_call in (lambda: Measurer("tiny", ProfileSettings(threads=cores + 1)), lambda: session_options(10**6)):
        with pytest.raises(BadInputError, match="logical cores") as err:
            library_call()
        assert err.value.param == "threads"


def test_5_generate_temperature_nan_is_bad_input(world, capsys):
    from llamanas_deploy.runtime import Sampling

    assert_refused(run_cli(capsys, "generate", "--artifact", str(world.artifact), "--prompt", "x", "--temperature", "nan"),
                   "--temperature")  # fmt: skip
    for value in (float("nan"), float("inf")):
        with pytest.raises(BadInputError, match="temperature"):
            Sampling(temperature=value)


def test_5_a_subnormal_temperature_samples_like_greedy_without_a_warning(world, capsys):
    code, out, err = run_cli(capsys, "generate", "--artifact", str(world.artifact), "--prompt", "x",
                             "--temperature", "1e-320", "--max-new-tokens", "3", "--json")  # fmt: skip
    assert code == 0 and "Warning" not in err, err
    greedy = run_cli(capsys, "generate", "--artifact", str(world.artifact), "--prompt", "x", "--max-new-tokens", "3",
                     "--json")  # fmt: skip
    assert json.loads(out)["tokens"] == json.loads(greedy[1])["tokens"]


def test_6_a_refused_profile_directory_is_left_exactly_as_found(world, capsys, tmp_path):
    profile = tmp_path / "foreign"
    shutil.copytree(world.root / "profile-foreign", profile)
    (profile / "measurements.jsonl").write_bytes((profile / "measurements.jsonl").read_bytes() + b'{"torn')
    before = snapshot(tmp_path)
    result = run_cli(capsys, "profile", "--model", str(world.model), "--space", str(world.space), "--target", "t",
                     "--samples", "2", "--out", str(profile))  # fmt: skip
    assert_refused(result, "measurements.jsonl:1", FOREIGN_DEVICE)
    assert snapshot(tmp_path) == before  # no fingerprint.json written, the torn tail not cut


def test_6_a_refused_new_directory_is_removed_again(tmp_path):
    from llamanas_deploy.profiler.store import ProfileWriter, current_fingerprint

    fingerprint = current_fingerprint()
    with ProfileWriter.open(tmp_path / "held", "t", fingerprint):
        with pytest.raises(BadInputError, match="another process"):
            ProfileWriter.open(tmp_path / "held", "t", fingerprint)
    assert sorted(p.name for p in (tmp_path / "held").iterdir()) == ["fingerprint.json"]
    with pytest.raises(BadInputError, match="holds target 't'"):
        ProfileWriter.open(tmp_path / "held", "u", fingerprint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held"]


def test_10_a_build_killed_by_sigkill_leaves_scratch_the_next_build_removes(tmp_path):
    """SIGKILL runs no cleanup: the next build of the same `--out` removes the dead process's scratch,
    and never a live one's."""
    import subprocess

    from llamanas_deploy.jsonfiles import new_directory

    out = tmp_path / "artifact"
    killed = (
        "import os, signal, sys\n"
        "from llamanas_deploy.jsonfiles import new_directory\n"
        "with new_directory(sys.argv[1]) as d:\n"
        "    (d / 'model.onnx').write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", killed, str(out)], capture_output=True)
    assert done.returncode == -9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".artifact.building-") and not out.exists()
    live = tmp_path / f".artifact.building-{os.uname().nodename}-{os.getpid()}-x"
    live.mkdir()  # a build of this (live) process: kept
    with new_directory(out) as built:
        (built / "model.onnx").write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "artifact"])
    assert (out / "model.onnx").read_bytes() == b"whole"


@pytest.mark.parametrize("name", ["tiny", "llama2-7b-paper", "small"])
def test_7_what_space_show_json_prints_loads_as_that_space(world, capsys, tmp_path, name):
    source = str(world.space) if name == "small" else name
    code, out, err = run_cli(capsys, "space", "show", source, "--json")
    assert code == 0, err
    shown = json.loads(out)
    saved = tmp_path / "s.json"
    saved.write_text(out)
    code, again, err = run_cli(capsys, "space", "show", str(saved), "--json")
    assert code == 0, err
    assert json.loads(again) == shown and {"id", "num_points", "num_distinct"} <= set(shown)
    saved.write_text(json.dumps(shown | {"depth": {"choices": shown["depth"]["choices"][:1], "policy": "first"}}))
    assert_refused(run_cli(capsys, "space", "show", str(saved)), str(saved), "does not match the space described")


def test_8_fit_out_that_cannot_be_written_is_refused_before_fitting(world, capsys, tmp_path, monkeypatch):
    import llamanas_deploy.predict.train as train

    def never(*args, **kwargs):
        raise AssertionError("fitted before the output was checked")

    monkeypatch.setattr(train, "fit", never)
    for out in (world.root / "a-file" / "p.json", Path("/proc/self/p.json")):
        assert_refused(run_cli(capsys, "fit", "--profile", str(tmp_path), "--out", str(out)), "--out", "cannot write")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        assert_refused(run_cli(capsys, "fit", "--profile", str(tmp_path), "--out", str(locked / "p.json")), "--out")


def test_8_baselines_raise_no_sklearn_warning_on_a_small_profile():
    from sklearn.exceptions import UndefinedMetricWarning

    from llamanas_deploy.model.families import read_shape
    from llamanas_deploy.predict.compare import compare
    from llamanas_deploy.predict.estimator import LatencyPredictor
    from llamanas_deploy.predict.features import FeatureBuilder
    from llamanas_deploy.space import load_space

    space = load_space("tiny")
    configs = space.sample_stratified(10, seed=0)  # `llamanas run --samples 10`: 8 to fit, 5 folds
    y = np.array([0.2 + 0.1 * c.num_layers + 0.0005 * sum(c.intermediate_sizes) for c in configs])
    features = FeatureBuilder(space, read_shape("tiny"), {"batch_size": 1, "prompt_len": 8, "context_len": 8, "gen_len": 4})
    estimator = LatencyPredictor(features, param_grid={"max_depth": (2,), "num_boost_round": (5,)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        _, rows, _ = compare(estimator, configs, y, np.arange(8), np.arange(8, 10))
    assert len(rows) >= 5


def test_8_profile_and_run_refuse_a_directory_of_unrelated_files(world, capsys):
    before = snapshot(world.root)
    user = str(world.root / "user-dir")
    assert_refused(run_cli(capsys, "profile", "--model", str(world.model), "--space", str(world.space), "--target", "t",
                           "--out", user), "--out", "neither empty nor a profile directory")  # fmt: skip
    assert_refused(run_cli(capsys, "run", "--out", user), "--out", "not an empty directory")
    assert snapshot(world.root) == before


def test_a_resumed_profile_directory_with_other_files_is_allowed(tmp_path):
    from llamanas_deploy.profiler.store import ProfileWriter, current_fingerprint

    with ProfileWriter.open(tmp_path, "t", current_fingerprint()):
        pass
    (tmp_path / "README.md").write_text("notes next to a profile")
    with ProfileWriter.open(tmp_path, "t", current_fingerprint()) as writer:
        assert writer.target == "t"


# ---- the artifact's own guarantees ----------------------------------------------------------------------
def test_the_good_artifact_opens_and_its_manifest_hash_is_sha256sum_format(world):
    opened = open_artifact(world.artifact)
    assert opened.onnx_path == world.artifact / "model.onnx"
    line = (world.artifact / MANIFEST_HASH).read_text()
    assert line == f"{sha256(world.artifact / MANIFEST)}  {MANIFEST}\n"
    assert read_manifest(world.artifact)["schema_version"] == 2


def test_a_link_inside_the_artifact_to_a_listed_file_is_fine(world, tmp_path):
    copy = tmp_path / "a"
    shutil.copytree(world.artifact, copy)
    (copy / "model.onnx").rename(copy / "weights.bin")
    (copy / "model.onnx").symlink_to("weights.bin")
    manifest = json.loads((copy / MANIFEST).read_text())
    seal(copy, manifest | {"files": manifest["files"] | {"weights.bin": manifest["files"]["model.onnx"]}})
    assert open_artifact(copy).onnx_path.resolve() == (copy / "weights.bin").resolve()


def test_json_output_is_strict_json_when_a_figure_is_not_finite(world, capsys):
    """One new token: no decode step, so no decode rate; `--json` prints null and says why, never NaN."""
    code, out, err = run_cli(capsys, "generate", "--artifact", str(world.artifact), "--prompt", "x", "--max-new-tokens",
                             "1", "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
    assert result["decode_tok_s"] is None and result["null_because"] == {"decode_tok_s": "not a finite number"}


def test_exporting_twice_gives_byte_identical_artifacts(world, tmp_path):
    import torch

    from llamanas_deploy.exporter import ExportSettings, export

    threads = torch.get_num_threads()  # an earlier in-process command may have pinned another count
    torch.set_num_threads(world.torch_threads)
    again = tmp_path / "again"
    try:
        export(world.model, str(world.space), SUBNET, ExportSettings(precision="fp32", max_eval_tokens=128), out=again, bench=None)
    finally:
        torch.set_num_threads(threads)
    names = sorted(p.name for p in again.iterdir())
    assert names == sorted(p.name for p in world.artifact.iterdir()) and MANIFEST_HASH in names
    for name in names:  # the manifest and its hash too: nothing measured, nothing differs
        assert sha256(again / name) == sha256(world.artifact / name), name


# ---- property: no manifest content opens a file outside the artifact -------------------------------------
HOSTILE_NAMES = [
    "model.onnx", "../outside.onnx", "../../etc/hostname", "/etc/hostname", "link-out", "link-dir/secret",
    "link-in", "sub/../model.onnx", "./model.onnx", "", ".", "..", "sub", "a\x00b", "model.onnx/", "link-loop",
    "tokenizer.json", "manifest.json", "manifest.sha256", "genai_config.json",
]  # fmt: skip


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> tuple[Path, Path]:
    """An artifact-like directory with links leading out, in and round; a secret outside it."""
    root = tmp_path_factory.mktemp("sandbox")
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "outside.onnx").write_bytes(b"outside model")
    art = root / "art"
    (art / "sub").mkdir(parents=True)
    for name in ("model.onnx", "tokenizer.json", "genai_config.json"):
        (art / name).write_bytes(name.encode())
    (art / "link-out").symlink_to(root / "outside.onnx")
    (art / "link-dir").symlink_to(outside)
    (art / "link-in").symlink_to("model.onnx")
    (art / "link-loop").symlink_to("link-loop")
    return root, art


def _digest(art: Path, name: object) -> str:
    """The digest a forger would write: the true one wherever the name can be read, so only the path check stands."""
    try:
        path = art / str(name)
        with path.open("rb"):
            pass
        return sha256(path) if path.is_file() else "0" * 64
    except (OSError, ValueError):
        return "0" * 64


def test_no_manifest_content_opens_a_file_outside_the_artifact(sandbox):
    from hypothesis import HealthCheck, given, settings, strategies as st

    root, art = sandbox
    names = st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(alphabet="./-_abclinkmode\x00", max_size=12),
                      st.integers(), st.none(), st.lists(st.sampled_from(HOSTILE_NAMES), max_size=2))  # fmt: skip
    opened: list[str] = []
    watching = [False]

    def audit(event: str, args: tuple) -> None:
        if watching[0] and event in ("open", "os.scandir", "os.listdir") and args and isinstance(args[0], (str, Path)):
            opened.append(str(args[0]))

    sys.addaudithook(audit)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(onnx=names, listed=st.lists(names, max_size=4), tokenizer=st.lists(names, max_size=2), decoder=names)
    def check(onnx, listed, tokenizer, decoder):
        (art / "genai_config.json").write_text(json.dumps({"model": {"context_length": 8, "decoder": {"filename": decoder}}}))
        files = {str(n): _digest(art, n) for n in [*listed, onnx, *tokenizer, "genai_config.json"] if isinstance(n, str)}
        manifest = {"schema_version": 2, "kind": "llamanas-onnx-artifact", "subnet": SUBNET.to_dict(),
                    "subnet_id": SUBNET.id, "precision": "fp32", "device": "cpu", "size": {"onnx_bytes": 0},
                    "verification": {}, "onnx": {"file": onnx}, "tokenizer_files": tokenizer, "files": files}  # fmt: skip
        seal(art, manifest)
        opened.clear()
        watching[0] = True
        try:
            artifact = open_artifact(art)
            reached = [artifact.onnx_path]
            if "tokenizer.json" in files:
                reached.append(artifact._path("tokenizer.json"))
        except BadInputError:
            reached = []
        finally:
            watching[0] = False
        for path in [*opened, *map(str, reached)]:
            assert Path(path).resolve().is_relative_to(art.resolve()), (path, manifest)

    check()


# ---- issue 23.1: no artifact content makes a reader load native code ------------------------------------
LIBRARY_SOURCE = """
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void loaded(void) {
    const char *marker = getenv("LLAMANAS_TEST_MARKER");
    FILE *f = marker ? fopen(marker, "w") : NULL;
    if (f) { fputs("native code ran\\n", f); fclose(f); }
}
"""


@pytest.fixture(scope="module")
def native_library(tmp_path_factory) -> Path:
    """A real shared library whose constructor writes the file $LLAMANAS_TEST_MARKER names."""
    import subprocess

    root = tmp_path_factory.mktemp("native")
    (root / "ops.c").write_text(LIBRARY_SOURCE)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(root / "libops.so"), str(root / "ops.c")], check=True)
    return root / "libops.so"


def _artifact_loading(world, native_library: Path, path: Path) -> Path:
    """A copy of the good artifact that ships the library, lists it and names it as custom_ops_library, re-sealed."""
    def change(d: Path, m: dict) -> dict:
        shutil.copyfile(native_library, d / "libops.so")
        m = m | {"files": m["files"] | {"libops.so": sha256(d / "libops.so")}}
        return _genai_edit(d, m, lambda c: _set_option(c, "custom_ops_library", str((d / "libops.so").resolve())))

    return artifact_variant(world.artifact, path, change)


def test_an_artifact_naming_a_custom_ops_library_is_refused_and_the_library_never_loads(world, native_library, tmp_path):
    import subprocess

    artifact = _artifact_loading(world, native_library, tmp_path / "a")
    marker = tmp_path / "marker"
    env = os.environ | {"LLAMANAS_TEST_MARKER": str(marker)}
    # the control: onnxruntime-genai itself, handed this artifact, runs the library's code
    subprocess.run([sys.executable, "-c", f"import onnxruntime_genai as og\ntry: og.Model({str(artifact)!r})\nexcept Exception: pass"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    assert marker.read_text() == "native code ran\n"
    marker.unlink()
    for command in (["generate", "--prompt", "x"], ["bench"]):
        done = subprocess.run([sys.executable, "-m", "llamanas_deploy", command[0], "--artifact", str(artifact), *command[1:]],
                              env=env, capture_output=True, text=True)  # fmt: skip
        assert_refused((done.returncode, done.stdout, done.stderr), "custom_ops_library: not a key the toolkit writes")
        assert not marker.exists()


GENAI_PATHS = [(), ("model",), ("model", "decoder"), ("model", "decoder", "session_options"), ("search",)]
GENAI_KEYS = ["custom_ops_library", "enable_profiling", "profile_file_prefix", "config_entries", "provider_options",
              "log_id", "filename", "session_options", "graph_optimization_level", "use_env_allocators"]  # fmt: skip


def test_no_genai_config_content_makes_a_reader_load_native_code(world, native_library, tmp_path):
    """Property: whatever a re-sealed genai_config.json holds, either `read_manifest` refuses it or
    onnxruntime-genai opening the artifact runs no code from the shipped library."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    import onnxruntime_genai as og

    art = _artifact_loading(world, native_library, tmp_path / "art")
    library = str((art / "libops.so").resolve())
    pristine = json.loads((world.artifact / "genai_config.json").read_text())
    manifest = json.loads((art / MANIFEST).read_text())
    marker = tmp_path / "marker"
    values = st.one_of(
        st.sampled_from([library, "libops.so", "./libops.so", "../a/libops.so", "model.onnx", "trace", "", 0, 1, True]),
        st.builds(lambda k, v: {k: v}, st.sampled_from(GENAI_KEYS), st.sampled_from([library, "libops.so", "1", {}])),
        st.lists(st.dictionaries(st.sampled_from(["cuda", "cpu", "tensorrt", "openvino"]),
                                 st.dictionaries(st.sampled_from(["cache_dir", "device_id", "so"]), st.just(library)),
                                 max_size=1), max_size=2),
    )  # fmt: skip
    os.environ["LLAMANAS_TEST_MARKER"] = str(marker)
    try:
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(where=st.sampled_from(GENAI_PATHS), key=st.one_of(st.sampled_from(GENAI_KEYS), st.text(max_size=8)), value=values)
        def check(where, key, value):
            config = json.loads(json.dumps(pristine))
            node = config
            for step in where:
                node = node[step]
            node[key] = value
            (art / "genai_config.json").write_text(json.dumps(config))
            seal(art, manifest | {"files": manifest["files"] | {"genai_config.json": sha256(art / "genai_config.json")}})
            try:
                read_manifest(art)
            except BadInputError:
                return
            try:
                og.Model(str(art))
            except Exception:  # noqa: BLE001 - refusing to run is fine; running the library is not
                pass
            assert not marker.exists(), (where, key, value)

        check()
    finally:
        del os.environ["LLAMANAS_TEST_MARKER"]


def test_a_ray_address_where_nothing_listens_is_refused_quickly_and_leaves_nothing(world, tmp_path):
    """Ray itself retries a dead address until killed; the toolkit gives up after a short connect timeout."""
    import socket
    import subprocess

    with socket.socket() as probe:  # a port nobody listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "search"
    done = subprocess.run(
        [sys.executable, "-m", "llamanas_deploy", "search", "--model", str(world.model), "--space", str(world.space),
         "--objective", "accuracy", "--objective", "size", "--ray", f"127.0.0.1:{port}", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert_refused((done.returncode, done.stdout, done.stderr), "--ray", f"127.0.0.1:{port}")
    assert not out.exists()
