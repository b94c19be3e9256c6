"""The artifact directory: what `llamanas export` writes and `generate` / `bench` read.

    model.onnx (+ model.onnx.data)   the decoder with its KV cache
    tokenizer.json, ...              copied from the model directory when present
    genai_config.json                so that onnxruntime-genai can load and run it
    manifest.json                    what it is, how it was verified and measured, sha256 of every file

Files are written deterministically (sorted keys, fixed names), so exporting the same
sub-network twice gives byte-identical files; only the manifest's `measured` block (a
timing on this device) differs. Reading checks every file against its recorded sha256.
No torch here: `generate` imports this module.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from ..concepts import TOKENIZER_FILES
from ..errors import BadInputError
from ..jsonfiles import read_json, write_json

SCHEMA_VERSION = 1
KIND = "llamanas-onnx-artifact"
MANIFEST = "manifest.json"
GENAI_CONFIG = "genai_config.json"
REQUIRED_KEYS = ("subnet", "subnet_id", "precision", "device", "onnx", "size", "verification")
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file in the directory but the manifest (relative POSIX paths, sorted)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(directory).as_posix(): sha256_file(p) for p in files}


def copy_tokenizer(model_dir: Path, out_dir: Path) -> list[str]:
    """Copy the tokenizer files the model directory has; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out_dir / name)
            copied.append(name)
    return copied


def genai_config(onnx_config, model_config: dict[str, Any], provider: str, onnx_file: str) -> dict[str, Any]:
    """onnxruntime-genai's `genai_config.json` for the exported decoder (see its config reference)."""
    from .config import PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE

    eos = model_config.get("eos_token_id", 0)
    provider_options = [] if provider == "CPUExecutionProvider" else [{"cuda": {}}]
    decoder = {
        "filename": onnx_file,
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": provider_options},
        "head_size": onnx_config.head_dim,
        "hidden_size": onnx_config.hidden_size,
        "num_attention_heads": onnx_config.num_attention_heads,
        "num_key_value_heads": onnx_config.num_kv_heads,
        "num_hidden_layers": onnx_config.num_layers,
        "inputs": {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "position_ids": "position_ids",
            "past_key_names": PAST_KEY,
            "past_value_names": PAST_VALUE,
        },
        "outputs": {
            "logits": "logits",
            "present_key_names": PRESENT_KEY,
            "present_value_names": PRESENT_VALUE,
        },
    }
    model = {
        "type": onnx_config.genai_type,
        "bos_token_id": model_config.get("bos_token_id", eos),
        "eos_token_id": eos,
        "pad_token_id": model_config.get("pad_token_id") or eos,
        "vocab_size": onnx_config.vocab_size,
        "context_length": model_config.get("max_position_embeddings", 2048),
        "decoder": decoder,
    }
    # present grows by the new tokens each step (no preallocated shared buffer in this graph)
    search = {
        "do_sample": False,
        "num_beams": 1,
        "num_return_sequences": 1,
        "max_length": model["context_length"],
        "min_length": 0,
        "past_present_share_buffer": False,
        "temperature": 1.0,
        "top_k": 1,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
        "length_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "diversity_penalty": 0.0,
        "early_stopping": True,
    }
    return {"model": model, "search": search}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the sha256 of every file and write `manifest.json`; returns the manifest."""
    manifest = {"schema_version": SCHEMA_VERSION, "kind": KIND, **manifest, "files": file_hashes(directory)}
    write_json(directory / MANIFEST, manifest, sort_keys=True)
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an artifact directory, after checking every file against its sha256."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise BadInputError(f"{directory}: not an artifact directory (no {MANIFEST})")
    manifest = read_json(path, "artifact manifest")
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND or not isinstance(manifest.get("files"), dict):
        raise BadInputError(f"{path}: not a llamanas artifact manifest (kind '{KIND}' with a 'files' table expected)")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BadInputError(f"{path}: schema_version {manifest.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise BadInputError(f"{path}: missing field(s) {missing}")
    check_files(directory, manifest["files"])
    return manifest


def check_files(directory: Path, expected: dict[str, str]) -> None:
    """`BadInputError` naming the first file that is missing or whose sha256 changed."""
    for name, digest in sorted(expected.items()):
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BadInputError(f"{directory / MANIFEST}: file entry '{name}' points outside the artifact")
        path = directory / name
        if not path.is_file():
            raise BadInputError(f"{path}: listed in {MANIFEST} but missing")
        actual = sha256_file(path)
        if actual != digest:
            raise BadInputError(
                f"{path}: sha256 {actual[:12]}... does not match {MANIFEST} ({digest[:12]}...): the file changed after export"
            )
