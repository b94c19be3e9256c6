"""GGUF import: small LLaMA GGUF files written here with ggml's `gguf` package, imported, and checked
against transformers' own GGUF loader (weights, logits, tokenizer) and the project's loader."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from conftest import run_cli
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.model.gguf_import import import_gguf
from llamanas_deploy.model.supernet import SuperNetwork

Q = gguf.GGMLQuantizationType
SHAPE = {"layers": 2, "hidden": 256, "heads": 4, "kv_heads": 2, "ffn": 256}  # K-quants need rows of 256
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hardware-aware search finds smaller networks that run faster on this device.",
    "Une phrase en français, avec des accents: élève, garçon, déjà vu.",
    "Numbers like 2024 and 3.14159 appear in text; so do tabs\tand new\nlines.",
    "def main():\n    return sum(range(10))  # code is text too",
]
STRINGS = ["Hello world", "  two spaces\n\nand new lines\ttab", "unicode: héllo 日本語 🙂 ñ",
           "<|im_start|>user\nhi<|im_end|>", ""]
LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}  # fmt: skip
GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}  # fmt: skip


# ---- writing GGUF files the way llama.cpp's converter does ------------------------------------------


@functools.cache
def byte_level_vocab() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A real byte-level BPE vocabulary (tokens by id, merges), trained on a few sentences."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator(CORPUS, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tuple(tokens), tuple(merges)


def sentencepiece_vocab() -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary (tokens, scores, types): control tokens, byte fallback, pieces."""
    pieces = ["▁", "▁t", "▁th", "▁the", "h", "e", "t", "o", "▁w", "or", "ld", "▁world", "l", "d", "r", "w", "▁h", "▁he"]
    pieces += ["ll", "llo", "▁hello", "a", "n", "▁a", "▁an", "▁and", "s", "i", "▁is"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    return tokens, scores, types


def random_state(vocab: int, widths: list[int], tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """HF-named float32 weights, large enough that the logits are far from zero; norm scales near 1."""
    rng = np.random.default_rng(seed)
    hidden, q, kv = SHAPE["hidden"], SHAPE["hidden"], SHAPE["kv_heads"] * SHAPE["hidden"] // SHAPE["heads"]
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i, width in enumerate(widths):
        layer = {
            "input_layernorm": (hidden,), "post_attention_layernorm": (hidden,),
            "self_attn.q_proj": (q, hidden), "self_attn.k_proj": (kv, hidden), "self_attn.v_proj": (kv, hidden),
            "self_attn.o_proj": (hidden, q),
            "mlp.gate_proj": (width, hidden), "mlp.up_proj": (width, hidden), "mlp.down_proj": (hidden, width),
        }  # fmt: skip
        shapes.update({f"model.layers.{i}.{name}.weight": shape for name, shape in layer.items()})
    draw = {1: lambda shape: 1.0 + 0.1 * rng.standard_normal(shape), 2: lambda shape: 0.08 * rng.standard_normal(shape)}
    return {name: draw[len(shape)](shape).astype(np.float32) for name, shape in shapes.items()}


def gguf_name(hf_name: str) -> str:
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    layer, name = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name).groups()
    return f"blk.{layer}.{LAYER_NAMES[name]}.weight"


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter interleaves each head's two rotary halves row by row."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def k_quant_blocks(rows: int, cols: int, qtype, rng) -> np.ndarray:
    """Valid Q4_K / Q6_K rows (Python cannot quantize to these): random quants and small finite fp16 scales."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows, cols // block_elems, block_bytes), dtype=np.uint8)
    scales = rng.uniform(1e-4, 3e-4, size=(rows, cols // block_elems, 2)).astype(np.float16).view(np.uint8)
    if qtype == Q.Q4_K:  # d, dmin, 12 bytes of 6-bit scales/mins, 128 bytes of 4-bit quants
        blocks[..., 0:4] = scales.reshape(rows, -1, 4)
    else:  # Q6_K: 128 bytes low bits, 64 high bits, 16 int8 scales, then d
        blocks[..., -2:] = scales[..., :2]
    return blocks.reshape(rows, -1)


def encode(weight: np.ndarray, qtype, rng) -> tuple[np.ndarray, object]:
    """The array and raw type to hand to `GGUFWriter.add_tensor` for `weight` stored as `qtype`."""
    if weight.ndim == 1 or qtype == Q.F32:
        return weight, None
    if qtype == Q.F16:
        return weight.astype(np.float16), None
    if qtype in (Q.Q4_K, Q.Q6_K):
        return k_quant_blocks(*weight.shape, qtype, rng), qtype
    return gguf.quants.quantize(weight, qtype), qtype


def write_gguf(path: Path, state: dict[str, np.ndarray], qtype=Q.F32, widths: list[int] | None = None,
               arch: str = "llama", tokenizer: str = "gpt2") -> Path:  # fmt: skip
    """A GGUF file as llama.cpp writes a LLaMA: `llama.*` metadata, the vocabulary, permuted q/k rows."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("test llama")
    writer.add_block_count(SHAPE["layers"])
    writer.add_context_length(128)
    writer.add_embedding_length(SHAPE["hidden"])
    writer.add_feed_forward_length(widths or SHAPE["ffn"])
    writer.add_head_count(SHAPE["heads"])
    writer.add_head_count_kv(SHAPE["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(SHAPE["hidden"] // SHAPE["heads"])
    add_vocabulary(writer, tokenizer)
    writer.add_chat_template(TEMPLATE)
    rng = np.random.default_rng(1)
    heads = {"attn_q": SHAPE["heads"], "attn_k": SHAPE["kv_heads"]}
    for hf_name, weight in state.items():
        name = gguf_name(hf_name)
        kind = name.split(".")[-2]
        weight = llama_cpp_permute(weight, heads[kind]) if kind in heads else weight
        data, raw_dtype = encode(weight, qtype, rng)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def add_vocabulary(writer, tokenizer: str) -> None:
    """A SentencePiece vocabulary for "llama", else a byte-level one (under whatever model name is given)."""
    writer.add_tokenizer_model(tokenizer)
    if tokenizer != "llama":
        tokens, merges = byte_level_vocab()
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
        writer.add_token_merges(merges)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_pad_token_id(2)
        writer.add_add_bos_token(False)
    else:
        tokens, scores, types = sentencepiece_vocab()
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)


VOCAB = len(byte_level_vocab()[0])


def plain_state(tied: bool = True, vocab: int = VOCAB) -> dict[str, np.ndarray]:
    """Weights of the test shape, one MLP width for all layers."""
    return random_state(vocab, [SHAPE["ffn"]] * SHAPE["layers"], tied)


def transformers_logits(directory: Path, name: str, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def imported_logits(out: Path, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return SuperNetwork.load(out).model(ids).logits


# ---- weights and logits ----------------------------------------------------------------------------


TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K]


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("qtype", TYPES, ids=[t.name for t in TYPES])
def test_logits_match_transformers_gguf_loader(tmp_path, qtype, tied):
    state = plain_state(tied)
    source = write_gguf(tmp_path / "model.gguf", state, qtype)
    events = []
    out = import_gguf(source, tmp_path / "hf", callback=events.append)
    ids = torch.arange(3, 3 + 24).remainder(VOCAB).unsqueeze(0)
    expected, got = transformers_logits(tmp_path, source.name, ids), imported_logits(out, ids)
    assert expected.std() > 0.5  # far from zero: a misplaced row would show
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied and config["vocab_size"] == VOCAB
    vectors = 1 + 2 * SHAPE["layers"]  # norms stay float32, as llama.cpp keeps them
    types = {"F32": len(state)} if qtype == Q.F32 else {"F32": vectors, qtype.name: len(state) - vectors}
    assert config["llamanas_import"]["tensor_types"] == dict(sorted(types.items()))
    assert events[-1].done == events[-1].total == len(state) and {e.stage for e in events} == {"import"}


def test_float32_weights_come_back_exactly_in_hf_layout(tmp_path):
    state = plain_state(tied=False)
    out = import_gguf(write_gguf(tmp_path / "model.gguf", state), tmp_path / "hf")
    loaded = SuperNetwork.load(out).model.state_dict()
    for name, weight in state.items():
        assert torch.equal(loaded[name], torch.from_numpy(weight)), name
    config = json.loads((out / "config.json").read_text())
    assert config["llamanas_import"] == {
        "source": "model.gguf", "format": "gguf", "tensor_types": {"F32": len(state)},
        "sha256": hashlib.sha256((tmp_path / "model.gguf").read_bytes()).hexdigest(),
    }  # fmt: skip
    assert (config["rope_theta"], config["max_position_embeddings"], config["num_key_value_heads"]) == (10000.0, 128, 2)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                     "tokenizer_config.json"]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "model.gguf"]  # no scratch left behind


def test_per_layer_feed_forward_lengths_give_intermediate_sizes(tmp_path):
    widths = [256, 512]
    state = random_state(VOCAB, widths, tied=True)
    out = import_gguf(write_gguf(tmp_path / "model.gguf", state, Q.Q8_0, widths=widths), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_sizes"] == widths and config["intermediate_size"] == 512
    net = SuperNetwork.load(out)
    assert [layer.mlp.down_proj.in_features for layer in net.model.model.layers] == widths
    assert torch.isfinite(imported_logits(out, torch.tensor([[1, 5, 9, 20]]))).all()


# ---- tokenizer ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_tokenizer_matches_transformers_and_keeps_the_chat_template(tmp_path, kind):
    from transformers import AutoTokenizer

    vocab = VOCAB if kind == "gpt2" else len(sentencepiece_vocab()[0])
    state = plain_state(vocab=vocab)
    source = write_gguf(tmp_path / "model.gguf", state, tokenizer=kind)
    out = import_gguf(source, tmp_path / "hf")
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file=source.name)
    imported = AutoTokenizer.from_pretrained(out)
    strings = STRINGS + (["the world and hello", " hello  the\nworld"] if kind == "llama" else CORPUS)
    for text in strings:  # the content tokens; whether BOS leads follows the file (below)
        ids = imported(text, add_special_tokens=False).input_ids
        assert ids == reference(text, add_special_tokens=False).input_ids, text
        assert imported.decode(ids) == reference.decode(ids)
        assert imported(text).input_ids == [1] * (kind == "llama") + ids  # gpt2 file: add_bos false; llama: default
    messages = [{"role": "user", "content": "hi there"}]
    assert imported.chat_template == TEMPLATE
    rendered = [t.apply_chat_template(messages, tokenize=False) for t in (imported, reference)]
    assert rendered[0] == rendered[1]
    settings = json.loads((out / "tokenizer_config.json").read_text())
    assert settings["chat_template"] == TEMPLATE and settings["model_max_length"] == 128


# ---- refusals ---------------------------------------------------------------------------------------


def other_architecture(path: Path) -> Path:
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def not_gguf(path: Path) -> Path:
    path.write_bytes(b"this is a text file, not GGUF\n" * 4)
    return path


def truncated(path: Path) -> Path:
    write_gguf(path, plain_state(), Q.Q8_0)
    path.write_bytes(path.read_bytes()[:5000])
    return path


BAD_FILES = {
    "other architecture": (other_architecture, "architecture 'qwen2' is not supported"),
    "not gguf": (not_gguf, "not a readable GGUF file"),
    "truncated": (truncated, "not a readable GGUF file"),
    "missing": (lambda path: path, "no such GGUF file"),
    "other tokenizer": (lambda path: write_gguf(path, plain_state(), tokenizer="bert"),
                        "tokenizer.ggml.model 'bert' is not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_refused_in_one_line_naming_the_file(tmp_path, case):
    make, fragment = BAD_FILES[case]
    source = make(tmp_path / "bad.gguf")
    with pytest.raises(BadInputError) as refused:
        import_gguf(source, tmp_path / "hf")
    message = str(refused.value)
    assert "\n" not in message and str(source) in message and fragment in message
    assert not (tmp_path / "hf").exists()


def test_a_tensor_type_that_cannot_be_dequantized_is_named(tmp_path):
    state = plain_state()
    state["model.norm.weight"] = state["model.norm.weight"].astype(np.int32)  # stored as I32
    with pytest.raises(BadInputError, match=r"tensor output_norm\.weight has type I32"):
        import_gguf(write_gguf(tmp_path / "model.gguf", state), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_non_empty_out_dir_is_refused_and_left_alone(tmp_path):
    state = plain_state()
    source = write_gguf(tmp_path / "model.gguf", state)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(BadInputError, match="refusing to overwrite"):
        import_gguf(source, tmp_path / "hf")
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["keep.txt"]


# ---- the command -------------------------------------------------------------------------------------


def test_cli_imports_and_reports(capsys, tmp_path):
    state = plain_state()
    source = write_gguf(tmp_path / "model.gguf", state, Q.Q4_0)
    code, out, _ = run_cli(capsys, "import-gguf", str(source), "--out", str(tmp_path / "a"), "--json")
    result = json.loads(out)
    assert code == 0 and result["out"] == str(tmp_path / "a") and result["num_hidden_layers"] == 2
    assert result["tensor_types"] == {"F32": 5, "Q4_0": 15} and result["params"] == sum(w.size for w in state.values())
    assert SuperNetwork.load(tmp_path / "a").shape.hidden_size == SHAPE["hidden"]
    code, out, _ = run_cli(capsys, "import-gguf", str(source), "--out", str(tmp_path / "b"), "--quiet")
    assert code == 0 and "layers 2, hidden 256" in out and result["sha256"] in out


@pytest.mark.parametrize("case", ["other architecture", "not gguf", "truncated", "missing", "non-empty out"])
def test_cli_bad_input_exits_2_with_one_line(capsys, tmp_path, case):
    out_dir = tmp_path / "hf"
    if case == "non-empty out":
        source = write_gguf(tmp_path / "model.gguf", plain_state())
        out_dir.mkdir()
        (out_dir / "keep.txt").write_text("mine")
    else:
        source = BAD_FILES[case][0](tmp_path / "bad.gguf")
    code, out, err = run_cli(capsys, "import-gguf", str(source), "--out", str(out_dir))
    assert code == 2 and out == "", err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert (str(out_dir) if case == "non-empty out" else str(source)) in err
