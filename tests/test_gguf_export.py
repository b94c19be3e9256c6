"""GGUF export on the built-in `tiny` model: written with ggml's `gguf` package, run by llama.cpp
(llama-cpp-python) against the torch sub-network, sealed in an artifact directory."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from gguf import GGUFReader  # noqa: E402 - after the skip: the llamacpp extra brings llama.cpp

from llamanas_deploy.errors import BadInputError, VerificationError  # noqa: E402
from llamanas_deploy.exporter import gguf_verify  # noqa: E402
from llamanas_deploy.exporter.gguf import GGUFSettings, export_gguf  # noqa: E402
from llamanas_deploy.model import gguf_write  # noqa: E402
from llamanas_deploy.model.gguf_write import write_gguf  # noqa: E402
from llamanas_deploy.model.gguf_import import import_gguf  # noqa: E402
from llamanas_deploy.model.supernet import SuperNetwork  # noqa: E402
from llamanas_deploy.onnx_model.artifact import GGUF_KIND, read_manifest, write_manifest  # noqa: E402
from llamanas_deploy.space import load_space  # noqa: E402
from llamanas_deploy.subnet_config import SubnetConfig  # noqa: E402

SUBNETS = {
    "uniform": SubnetConfig(8, (768,) * 8),
    "heterogeneous": SubnetConfig(6, (768, 192, 576, 384, 768, 192)),
}
PRECISIONS = ("f16", "q8_0", "q4_0", "q4_k_m")
MATRIX_TYPE = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k_m": "Q4_K"}
OUTPUT_TYPE = MATRIX_TYPE | {"q4_0": "Q8_0", "q4_k_m": "Q6_K"}  # the output matrix (token_embd: tied)
SETTINGS = {"threads": 1, "max_eval_tokens": 1024}  # 8 windows of 128 held-out tokens: quick, still a gate


@pytest.fixture(scope="module")
def tiny():
    return SuperNetwork.load("tiny")


@pytest.fixture(scope="module")
def artifacts(tiny, tmp_path_factory):
    """Every sub-network at every precision, exported once: {(shape, precision): Artifact}."""
    root = tmp_path_factory.mktemp("gguf")
    return {(name, precision): export_gguf(tiny, "tiny", subnet, GGUFSettings(precision, **SETTINGS),
                                           out=root / f"{name}-{precision}")
            for name, subnet in SUBNETS.items() for precision in PRECISIONS}  # fmt: skip


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", SUBNETS)
def test_export_passes_the_gate_and_reads_back(artifacts, name, precision):
    artifact = artifacts[name, precision]
    subnet = SUBNETS[name]
    manifest = read_manifest(artifact.directory)
    assert manifest == artifact.manifest and manifest["kind"] == GGUF_KIND and manifest["subnet_id"] == subnet.id
    assert set(manifest["files"]) == {"model.gguf"} and manifest["precision"] == precision
    quality = manifest["verification"]["quality_vs_torch"]
    assert quality["perplexity_change_pct"] <= quality["max_perplexity_increase_pct"]
    assert quality["next_token_agreement"] >= quality["min_next_token_agreement"]
    assert manifest["verification"]["tokenizer"]["tokens"] > 0
    reader = GGUFReader(artifact.directory / "model.gguf")
    architecture = "deci" if name == "heterogeneous" else "llama"  # llama.cpp's graph with per-layer shapes
    assert field(reader, "general.architecture") == architecture == manifest["gguf"]["architecture"]
    widths = field(reader, f"{architecture}.feed_forward_length")
    assert widths == (list(subnet.intermediate_sizes) if name == "heterogeneous" else 768)
    assert field(reader, f"{architecture}.block_count") == subnet.num_layers
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert manifest["gguf"]["tensor_types"] == dict(sorted(Counter(types.values()).items()))
    assert "output.weight" not in types  # tied: llama.cpp reads the output matrix from token_embd
    # q4_k_m: llama.cpp's quantizer gives layer 1's rows of 192 (not whole Q4_K blocks of 256) Q5_0
    ffn_down = "Q5_0" if (name, precision) == ("heterogeneous", "q4_k_m") else MATRIX_TYPE[precision]
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.1.ffn_down.weight"] == ffn_down
    assert types["blk.1.attn_q.weight"] == MATRIX_TYPE[precision]
    assert types["token_embd.weight"] == OUTPUT_TYPE[precision]
    assert not any(path.name.endswith(".f32") for path in artifact.directory.parent.rglob("*"))  # no intermediate


def test_f16_logits_are_within_the_tight_tolerance(artifacts):
    logits = artifacts["heterogeneous", "f16"].manifest["verification"]["logits_vs_torch"]
    gate = gguf_verify.GATES["f16"]
    assert logits["relative_max_diff_limit"] == gate.max_relative_logits_diff and logits["decode_steps"] == 64
    assert logits["relative_mean_diff"] <= gate.mean_relative_logits_diff
    assert logits["relative_max_diff"] <= gate.max_relative_logits_diff


@pytest.mark.parametrize("name, precision", [("uniform", "f16"), ("uniform", "q4_0"), ("heterogeneous", "q4_0"),
                                             ("heterogeneous", "q4_k_m")])
def test_import_gguf_round_trips_the_subnetwork(artifacts, tiny, tmp_path, name, precision):
    """The project's own GGUF importer reads the file back: the shape, and the weights (q/k rows included)."""
    from safetensors.numpy import load_file

    subnet = SUBNETS[name]
    imported = import_gguf(artifacts[name, precision].directory / "model.gguf", tmp_path / "imported")
    config = json.loads((imported / "config.json").read_text())
    widths = config.get("intermediate_sizes", [config["intermediate_size"]] * config["num_hidden_layers"])
    assert config["num_hidden_layers"] == subnet.num_layers and widths == list(subnet.intermediate_sizes)
    assert config["tie_word_embeddings"] and config["vocab_size"] == 4096
    weights = load_file(imported / "model.safetensors")
    model = tiny.extract(subnet, copy=False)
    tolerance = 1e-3 if precision == "f16" else 0.05  # float16 rounding; one 4-bit step of these weights
    for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                 "model.layers.3.mlp.down_proj.weight"):  # fmt: skip
        expected = model.state_dict()[name].numpy()
        assert np.abs(weights[name] - expected).max() < tolerance, name


def test_a_tampered_gguf_is_refused(artifacts, tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(artifacts["uniform", "q8_0"].directory, copy)
    path = copy / "model.gguf"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match=r"model\.gguf: sha256 .* does not match manifest\.json"):
        read_manifest(copy)


def test_a_resealed_manifest_still_has_its_gguf_checked(artifacts, tmp_path):
    """Whoever edits an artifact can re-seal it: the named file and the GGUF's content are checked too."""
    import gguf

    copy = tmp_path / "artifact"
    shutil.copytree(artifacts["uniform", "q8_0"].directory, copy)
    manifest = read_manifest(copy)
    write_manifest(copy, manifest | {"gguf": manifest["gguf"] | {"file": "../model.gguf"}})
    with pytest.raises(BadInputError, match="'../model.gguf' is not a plain relative path"):
        read_manifest(copy)
    for architecture, qtype in (("bert", gguf.GGMLQuantizationType.F32), ("llama", gguf.GGMLQuantizationType.Q5_1)):
        writer = gguf.GGUFWriter(copy / "model.gguf", architecture)
        writer.add_tensor("token_embd.weight", gguf.quants.quantize(np.ones((2, 32), np.float32), qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        write_manifest(copy, manifest)
        with pytest.raises(BadInputError, match="model.gguf: (general.architecture is 'bert'|tensor token_embd.weight has type Q5_1)"):
            read_manifest(copy)


def test_a_failed_gate_leaves_nothing(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(gguf_verify.GATES, "f16", gguf_verify.Gate(0.0, 0.0, 0.0))
    out = tmp_path / "out"
    failed = r"f16 GGUF export failed verification: logits relative_max_diff .* > 0; logits relative_mean_diff"
    with pytest.raises(VerificationError, match=failed):
        export_gguf(tiny, "tiny", SUBNETS["heterogeneous"], GGUFSettings("f16", **SETTINGS), out=out)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(VerificationError, match=r"perplexity increase % .* > 0"):
        export_gguf(tiny, "tiny", SUBNETS["uniform"], GGUFSettings("q4_0", max_ppl_increase_pct=0, **SETTINGS), out=out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "fields, param",
    [({"precision": "q4_k"}, "precision"), ({"precision": "int8"}, "precision"), ({"max_eval_tokens": 64}, "max_eval_tokens"),
     ({"max_eval_tokens": 1.5e3}, "max_eval_tokens"), ({"threads": 0}, "threads"),
     ({"max_ppl_increase_pct": -1}, "max_ppl_increase_pct"), ({"max_ppl_increase_pct": float("nan")}, "max_ppl_increase_pct")],
)  # fmt: skip
def test_bad_settings_are_refused(fields, param):
    with pytest.raises(BadInputError) as error:
        GGUFSettings(**fields)
    assert error.value.param == param


@pytest.mark.parametrize("precision", ["q4_0", "q4_k_m"])
def test_writing_is_deterministic(tiny, tmp_path, precision):
    subnet = SUBNETS["heterogeneous"]
    first, second = (write_gguf(tiny, subnet, tmp_path / f"{file}.gguf", precision) for file in "ab")
    assert first == second | {"file": "a.gguf"} and first["f16_fallback"] == []
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.gguf", "b.gguf"]  # q4_k_m's F32 file is gone


def test_a_failed_llama_cpp_quantizer_leaves_no_intermediate(tiny, tmp_path):
    """The quantizer fails for real: its target is a directory (the F32 file beside it is written)."""
    (tmp_path / "model.gguf").mkdir()
    with pytest.raises(BadInputError, match=r"model\.gguf: llama\.cpp's quantizer failed \(llama_model_quantize: failed"):
        write_gguf(tiny, SUBNETS["heterogeneous"], tmp_path / "model.gguf", "q4_k_m")
    assert [path.name for path in tmp_path.iterdir()] == ["model.gguf"]


def tiny_copy(tmp_path: Path, **tokenizer_config) -> SuperNetwork:
    """`tiny` from a copy of its directory, its tokenizer_config.json updated."""
    source = SuperNetwork.load("tiny").source
    model_dir = shutil.copytree(source, tmp_path / "tiny")
    config_path = model_dir / "tokenizer_config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | tokenizer_config))
    return SuperNetwork.load(model_dir)


def test_the_chat_template_travels_and_odd_tokenizers_are_refused(tmp_path):
    template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    supernet = tiny_copy(tmp_path, chat_template=template)
    subnet = load_space("tiny").smallest
    write_gguf(supernet, subnet, tmp_path / "chat.gguf", "q8_0")
    reader = GGUFReader(tmp_path / "chat.gguf")
    assert field(reader, "tokenizer.chat_template") == template and field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert field(reader, "tokenizer.ggml.token_type")[:3] == [3, 3, 3]  # <pad>, <s>, </s>: control tokens
    tokenizer_path = supernet.source / "tokenizer.json"
    spec = json.loads(tokenizer_path.read_text())
    tokenizer_path.write_text(json.dumps(spec | {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}))
    with pytest.raises(BadInputError, match="pre-tokenizer .*Metaspace.* has no llama.cpp equivalent"):
        write_gguf(supernet, subnet, tmp_path / "refused.gguf", "q8_0")


def test_digits_split_one_by_one_tokenize_alike(tmp_path, monkeypatch):
    """A tokenizer.json that splits digits off one by one (SmolLM2's own) is llama.cpp's 'smollm'
    pre-tokenizer: the export's tokenizer check compares both on text full of numbers, and refuses
    the plain GPT-2 split for it."""
    supernet = tiny_copy(tmp_path)
    tokenizer_path = supernet.source / "tokenizer.json"
    spec = json.loads(tokenizer_path.read_text())
    digits = {"type": "Digits", "individual_digits": True}
    split = {"type": "Sequence", "pretokenizers": [digits, spec["pre_tokenizer"]]}
    tokenizer_path.write_text(json.dumps(spec | {"pre_tokenizer": split}))
    data = tmp_path / "numbers.txt"
    data.write_text(" ".join(f"In {1900 + i} there were {i * 7919} ships, {i}.{i * 13} tons each." for i in range(40)))
    artifact = export_gguf(supernet, "tiny", load_space("tiny").smallest, GGUFSettings("q8_0", data=str(data), **SETTINGS),
                           out=tmp_path / "out")  # fmt: skip
    assert artifact.manifest["gguf"]["tokenizer"]["pre"] == "smollm"
    assert artifact.manifest["verification"]["tokenizer"]["tokens"] > 500
    monkeypatch.setitem(gguf_write.PRE_TOKENIZERS, ("digits", "byte_level"), "gpt-2")
    with pytest.raises(VerificationError, match="llama.cpp tokenizes text 0 differently from tokenizer.json from token 1"):
        export_gguf(supernet, "tiny", load_space("tiny").smallest, GGUFSettings("q8_0", data=str(data), **SETTINGS),
                    out=tmp_path / "refused")  # fmt: skip


def odd_checkpoint(path: Path) -> SuperNetwork:
    """Untied embeddings, hidden size 72 (rows that are not whole blocks of 32), a byte-level BPE
    tokenizer with one merge (llama.cpp's BPE vocabulary needs merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from conftest import make_checkpoint

    make_checkpoint(path, seed=2, vocab_size=257, hidden_size=72, num_attention_heads=9, num_key_value_heads=3)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)} | {"Ġt": 256}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t")]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.save(str(path / "tokenizer.json"))
    return SuperNetwork.load(path)


# rows of 128 and 96: whole Q4_0 blocks; not whole Q4_K / Q6_K blocks, which llama.cpp's quantizer
# replaces by Q5_0 / Q8_0 (its last layer's ffn_down gets more bits)
@pytest.mark.parametrize("precision, ffn_down", [("q4_0", ("Q4_0", "Q4_0")), ("q4_k_m", ("Q5_0", "Q8_0"))])
def test_untied_output_and_rows_that_are_not_whole_blocks(tmp_path, precision, ffn_down):
    import torch

    supernet = odd_checkpoint(tmp_path / "model")
    subnet = SubnetConfig(3, (128, 64, 96))
    written = write_gguf(supernet, subnet, tmp_path / "odd.gguf", precision)
    types = {t.name: t.tensor_type.name for t in GGUFReader(tmp_path / "odd.gguf").tensors}
    assert types["output.weight"] == types["token_embd.weight"] == types["blk.0.attn_q.weight"] == "F16"
    assert (types["blk.0.ffn_down.weight"], types["blk.2.ffn_down.weight"]) == ffn_down
    assert set(written["f16_fallback"]) == {name for name, kind in types.items() if kind == "F16"}
    ids = np.arange(5, 69, dtype=np.int64)
    with torch.no_grad():
        reference = supernet.extract(subnet)(input_ids=torch.from_numpy(ids[None])).logits[0].numpy()
    with gguf_verify.open_llama(tmp_path / "odd.gguf", threads=1) as llama:
        assert llama.tokenize(" t t") == [256, 256]
        logits = llama.logits(ids, prefill=32)
    assert np.abs(logits - reference).mean() < 0.05 * np.abs(reference).mean()  # measured: 0.015 (q4_0 ffn_down)



def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    from llamanas_deploy.cli import main

    with pytest.raises(SystemExit) as done:
        main(list(args))
    out, err = capsys.readouterr()
    return done.value.code, out, err


def test_the_export_command_writes_a_verified_gguf_artifact(tmp_path, capsys):
    heterogeneous = json.dumps(SUBNETS["heterogeneous"].to_dict())
    args = ["export", "--format", "gguf", "--precision", "q8_0", "--subnet", heterogeneous, "--threads", "1",
            "--max-eval-tokens", "512", "--quiet"]  # fmt: skip
    code, out, err = run_cli(capsys, *args, "--out", str(tmp_path / "a"), "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["artifact"] == str(tmp_path / "a") and printed["gguf"]["architecture"] == "deci"
    assert read_manifest(tmp_path / "a")["precision"] == "q8_0"
    code, out, err = run_cli(capsys, *args, "--out", str(tmp_path / "b"))
    assert code == 0 and "GGUF q8_0 (deci), llama.cpp" in out, err


@pytest.mark.parametrize("extra", [["--block-size", "32"], ["--device", "cuda"], ["--precision", "int8"]])
def test_the_export_command_refuses_onnx_only_options_with_gguf_in_one_line(tmp_path, capsys, extra):
    code, _, err = run_cli(capsys, "export", "--format", "gguf", "--subnet", "largest", "--out", str(tmp_path / "a"),
                           *extra)  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert not (tmp_path / "a").exists()
