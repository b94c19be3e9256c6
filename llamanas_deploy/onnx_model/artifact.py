"""The artifact directory: what `llamanas export` writes and `generate` / `bench` read.

    model.onnx (+ model.onnx.data)   the decoder with its KV cache
    tokenizer.json, ...              copied from the model directory when present
    genai_config.json                so that onnxruntime-genai can load and run it
    manifest.json                    what it is, how it was verified and measured, sha256 of every file
    manifest.sha256                  sha256 of manifest.json (`sha256sum -c manifest.sha256` checks it)

Files are written deterministically (sorted keys, fixed names), so exporting the same
sub-network twice gives byte-identical files; only the manifest's `measured` block (a
timing on this device) differs. No torch here: `generate` imports this module.

`read_manifest` is the one check every reader goes through (generate, bench, run, the API):
the manifest must match `manifest.sha256`; every path it names (`files`, `onnx.file`,
`tokenizer_files`, the decoder of `genai_config.json`) must stay inside the directory after
links are followed and be listed in `files`; the directory may hold no other file (ONNX
Runtime opens external data next to the model) and no link leading out of it; and every
listed file must match its sha256. Then the content itself (`allowlist`): `genai_config.json` holds only
what the toolkit writes (no custom-op library, no provider option that loads code or writes files),
and the graph only ops the toolkit emits, its external data only in listed files.

A GGUF artifact (`kind` `GGUF_KIND`, written by `exporter.gguf`) holds `model.gguf` and the manifest
alone; the same checks apply (`gguf.file` is its named path), and its content check is that the file
reads as a GGUF of an architecture and with tensor types the toolkit writes. `KINDS` holds what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..concepts import DEVICES, EXPORT_PRECISIONS, GGUF_ARCHITECTURES, GGUF_PRECISIONS, TOKENIZER_FILES
from ..errors import BadInputError
from ..jsonfiles import (
    checked_choice, checked_integer, checked_object, dumps, field_error, is_integer, parse_json, sha256_file, write_text
)  # fmt: skip
from ..subnet_config import SubnetConfig
from .allowlist import check_genai_config, check_graph
from .config import PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE

SCHEMA_VERSION = 2  # 2: manifest.sha256 covers the manifest; every named path is checked
KIND = "llamanas-onnx-artifact"
GGUF_KIND = "llamanas-gguf-artifact"
GGUF_TENSOR_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K", "Q5_0")  # Q4_K to Q5_0: llama.cpp's q4_k_m
MANIFEST = "manifest.json"
MANIFEST_HASH = "manifest.sha256"
SEALED = (MANIFEST, MANIFEST_HASH)  # the files `files` does not list: they cover it
MAX_MANIFEST_BYTES = 16 << 20
GENAI_CONFIG = "genai_config.json"


@dataclass(frozen=True)
class ArtifactKind:
    """What a manifest of one `kind` must hold: its fields, its precisions, the block naming the model
    file (`<model>.file`) and its size (`size.<model>_bytes`), and the check of that file's content."""

    required: tuple[str, ...]
    precisions: tuple[str, ...]
    model: str
    check_content: Callable[[Path, str, dict[str, str]], None]


def _check_gguf(directory: Path, name: str, files: dict[str, str]) -> None:
    """`BadInputError` unless the file reads as a GGUF of an architecture and with tensor types the
    toolkit writes (`GGUF_ARCHITECTURES`, `GGUF_TENSOR_TYPES`)."""
    from gguf import GGUFReader

    path = Path(directory) / name
    try:
        reader = GGUFReader(path)
    except Exception as err:  # noqa: BLE001 - the reader raises ValueError, struct and numpy errors alike
        raise BadInputError(f"{path}: not a readable GGUF file ({type(err).__name__})") from None
    field = reader.fields.get("general.architecture")
    architecture = None if field is None else field.contents()
    if architecture not in GGUF_ARCHITECTURES:
        raise BadInputError(f"{path}: general.architecture is {architecture!r}, expected one of {list(GGUF_ARCHITECTURES)}")
    for tensor in reader.tensors:
        if tensor.tensor_type.name not in GGUF_TENSOR_TYPES:
            raise BadInputError(f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, not one the "
                                f"toolkit writes {list(GGUF_TENSOR_TYPES)}")  # fmt: skip


KINDS = {
    KIND: ArtifactKind(("subnet", "subnet_id", "precision", "device", "onnx", "size", "verification"),
                       EXPORT_PRECISIONS, "onnx", check_graph),
    GGUF_KIND: ArtifactKind(("subnet", "subnet_id", "precision", "device", "gguf", "size", "verification"),
                            GGUF_PRECISIONS, "gguf", _check_gguf),
}  # fmt: skip


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file in the directory but the manifest and its hash (relative POSIX paths, sorted)."""
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file() and p.relative_to(directory).as_posix() not in SEALED)
    return {p.relative_to(directory).as_posix(): sha256_file(p) for p in files}


def copy_tokenizer(model_dir: Path, out_dir: Path) -> list[str]:
    """Copy the tokenizer files the model directory has; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out_dir / name)
            copied.append(name)
    return copied


def genai_config(onnx_config, model_config: dict[str, Any], provider: str, onnx_file: str, graph: str = "dynamo") -> dict[str, Any]:
    """onnxruntime-genai's `genai_config.json` for the exported decoder (see its config reference).

    The fused graph's GroupQueryAttention updates a preallocated cache in place, so onnxruntime-genai
    shares one past/present buffer; the dynamo graph concatenates, so its present grows each step.
    """
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
    search = {
        "do_sample": False,
        "num_beams": 1,
        "num_return_sequences": 1,
        "max_length": model["context_length"],
        "min_length": 0,
        "past_present_share_buffer": graph == "fused",
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


def write_manifest(directory: Path, manifest: dict[str, Any], kind: str = KIND) -> dict[str, Any]:
    """Add the sha256 of every file, write `manifest.json` and its hash `manifest.sha256`; returns the manifest."""
    manifest = {"schema_version": SCHEMA_VERSION, "kind": kind, **manifest, "files": file_hashes(directory)}
    text = dumps(manifest, sort_keys=True) + "\n"
    write_text(directory / MANIFEST, text)
    write_text(directory / MANIFEST_HASH, f"{hashlib.sha256(text.encode()).hexdigest()}  {MANIFEST}\n")
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an artifact directory, after every check (module docstring); `BadInputError` otherwise."""
    directory = Path(directory)
    if not directory.is_dir() or not (directory / MANIFEST).exists():
        raise BadInputError(f"{directory}: not an artifact directory (no {MANIFEST})")
    root = directory.resolve()
    path = directory / MANIFEST
    text = _read_manifest_text(directory, root)
    manifest = parse_json(text, str(path))
    if not isinstance(manifest, dict) or manifest.get("kind") not in KINDS or not isinstance(manifest.get("files"), dict):
        raise BadInputError(f"{path}: not a llamanas artifact manifest (kind one of {list(KINDS)} with a 'files' "
                            "table expected)")  # fmt: skip
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BadInputError(f"{path}: schema_version {manifest.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    kind = KINDS[manifest["kind"]]
    missing = [key for key in kind.required if key not in manifest]
    if missing:
        raise BadInputError(f"{path}: missing field(s) {missing}")
    _check_fields(manifest, kind, str(path))
    check_named_paths(directory, manifest)
    check_files(directory, manifest["files"])
    kind.check_content(directory, manifest[kind.model]["file"], manifest["files"])
    return manifest


def _check_fields(manifest: dict[str, Any], kind: ArtifactKind, source: str) -> None:
    """The fields `generate` and `bench` read, checked like a CLI option: whoever edits an artifact can re-seal it."""
    checked_choice(manifest["device"], DEVICES, source, "device")
    checked_choice(manifest["precision"], kind.precisions, source, "precision")
    subnet = SubnetConfig.from_dict(manifest["subnet"], f"{source}: subnet")
    if manifest["subnet_id"] != subnet.id:
        raise field_error(source, "subnet_id", f"{subnet.id!r} (the id of its subnet)", manifest["subnet_id"])
    checked_object(manifest[kind.model], source, kind.model)
    size = checked_object(manifest["size"], source, "size")
    checked_integer(size.get(f"{kind.model}_bytes"), source, f"size.{kind.model}_bytes", minimum=0)
    eos = checked_object(manifest.get("tokens", {}), source, "tokens").get("eos_token_id")
    if not (eos is None or is_integer(eos) or isinstance(eos, list) and all(map(is_integer, eos))):
        raise field_error(source, "tokens.eos_token_id", "an integer, a list of integers or null", eos)


def _read_manifest_text(directory: Path, root: Path) -> str:
    """manifest.json's text, once its bytes matched manifest.sha256."""
    path, sidecar = directory / MANIFEST, directory / MANIFEST_HASH
    for name in SEALED:
        inside(directory, name, root)
    if not sidecar.exists():
        old = _schema_version_of(path)
        why = f"schema_version {old} predates it; export the artifact again" if old == 1 else "it covers the manifest"
        raise BadInputError(f"{sidecar}: missing ({why})")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BadInputError(f"{path}: {size:,} bytes; a manifest is far smaller (at most {MAX_MANIFEST_BYTES:,})")
    data, line = path.read_bytes(), _read_small(sidecar, 256)
    match = re.fullmatch(rf"([0-9a-f]{{64}})  {re.escape(MANIFEST)}\n?", line)
    if match is None:
        raise BadInputError(f"{sidecar}: expected one line '<sha256>  {MANIFEST}'")
    actual = hashlib.sha256(data).hexdigest()
    if actual != match.group(1):
        raise BadInputError(
            f"{path}: sha256 {actual[:12]}... does not match {MANIFEST_HASH} ({match.group(1)[:12]}...): "
            "the manifest changed after export"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not a UTF-8 text file") from None


def _read_small(path: Path, limit: int) -> str:
    with path.open("rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def _schema_version_of(path: Path) -> Any:
    """What an unverified manifest says its schema version is (only to explain a refusal)."""
    try:
        if path.stat().st_size <= MAX_MANIFEST_BYTES:
            return json.loads(path.read_bytes()).get("schema_version")
    except (OSError, ValueError, AttributeError):
        pass
    return None


def inside(directory: Path, name: Any, root: Path | None = None) -> Path:
    """`directory / name` for a relative POSIX `name` that stays inside `directory` after links are
    followed and is a regular file; `BadInputError` naming the manifest otherwise."""
    root = root or Path(directory).resolve()
    where = f"{directory / MANIFEST}: " if name not in SEALED else f"{directory}: "
    if not isinstance(name, str) or not name or "\x00" in name or name.startswith("/") or ".." in name.split("/"):
        raise BadInputError(f"{where}path {name!r} is not a plain relative path inside the artifact")
    path = Path(directory) / name
    if not _resolve(path).is_relative_to(root):
        raise BadInputError(f"{where}'{name}' points outside the artifact ({_resolve(path)})")
    if path.exists() and not path.is_file():
        raise BadInputError(f"{path}: not a regular file")
    return path


def _resolve(path: Path) -> Path:
    """`path` with every link followed; `BadInputError` for a link loop."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # Python < 3.13 raises RuntimeError on a loop
        raise BadInputError(f"{path}: a link loop") from None


def named_paths(manifest: dict[str, Any]) -> list[Any]:
    """Every file name the manifest points readers at, besides the `files` table itself."""
    kind = KINDS.get(manifest.get("kind"), KINDS[KIND])
    model = manifest.get(kind.model)
    names = [model.get("file") if isinstance(model, dict) else None]
    tokenizer = manifest.get("tokenizer_files", [])
    names += tokenizer if isinstance(tokenizer, list) else [tokenizer]
    return names


def check_named_paths(directory: Path, manifest: dict[str, Any]) -> None:
    """Every path the manifest (and genai_config.json) names stays inside and is listed in `files`,
    and the directory holds no unlisted file and no link leading out."""
    root = Path(directory).resolve()
    files = manifest["files"]
    for name, digest in files.items():
        inside(directory, name, root)
        if not isinstance(digest, str):
            raise BadInputError(f"{directory / MANIFEST}: files['{name}'] must be a sha256 string, got {digest!r}")
    for name in named_paths(manifest):
        inside(directory, name, root)
        if name not in files:
            raise BadInputError(f"{directory / MANIFEST}: '{name}' is not covered by a sha256 in 'files'")
    _check_no_strays(directory, root, files)
    if GENAI_CONFIG in files:
        check_files(directory, {GENAI_CONFIG: files[GENAI_CONFIG]})
        _check_genai_config(directory, root, files)


def _check_no_strays(directory: Path, root: Path, files: dict[str, str]) -> None:
    for here, dirs, names in os.walk(directory):
        for name in dirs + names:
            path = Path(here) / name
            relative = path.relative_to(directory).as_posix()
            if path.is_symlink() and not _resolve(path).is_relative_to(root):
                raise BadInputError(f"{path}: a link out of the artifact ({_resolve(path)})")
            if name in names and relative not in files and relative not in SEALED:
                raise BadInputError(f"{path}: not listed in {MANIFEST} (an artifact holds only the files it lists)")


def _check_genai_config(directory: Path, root: Path, files: dict[str, str]) -> None:
    path = directory / GENAI_CONFIG
    config = parse_json(_read_small(path, MAX_MANIFEST_BYTES), str(path), unique_keys=True)
    check_genai_config(config, str(path))
    name = config.get("model", {}).get("decoder", {}).get("filename")
    if name is None or name not in files:
        raise BadInputError(f"{path}: model.decoder.filename {name!r} is not a file listed in {MANIFEST}")
    inside(directory, name, root)
    checked_integer(config["model"].get("context_length"), str(path), "model.context_length")


def check_files(directory: Path, expected: dict[str, str]) -> None:
    """`BadInputError` naming the first file that is missing or whose sha256 changed."""
    root = Path(directory).resolve()
    for name, digest in sorted(expected.items()):
        path = inside(directory, name, root)
        if not path.is_file():
            raise BadInputError(f"{path}: listed in {MANIFEST} but missing")
        actual = sha256_file(path)
        if actual != digest:
            raise BadInputError(
                f"{path}: sha256 {actual[:12]}... does not match {MANIFEST} ({str(digest)[:12]}...): the file changed after export"
            )
