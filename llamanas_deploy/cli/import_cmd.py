"""`llamanas import-gguf`: a GGUF LLaMA checkpoint (llama.cpp's format) as a Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit, progress_printer
from .options import JSON, NEW_DIRECTORY, OUT, QUIET


@click.command("import-gguf")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@OUT(required=True, note=NEW_DIRECTORY)
@QUIET()
@JSON()
def import_gguf(file: Path, out: Path, quiet: bool, as_json: bool) -> None:
    """Dequantize a GGUF LLaMA file to float32 safetensors, with its config and tokenizer."""
    from ..model.gguf_import import import_gguf as run_import, summarize  # imports torch

    emit(summarize(run_import(file, out, progress_printer(quiet))), as_json, _render)


def _render(r: dict) -> str:
    widths = sorted(set(r["intermediate_sizes"]))
    mlp = str(widths[0]) if len(widths) == 1 else f"{widths[0]}..{widths[-1]} (per layer)"
    types = ", ".join(f"{name} x{count}" for name, count in r["tensor_types"].items())
    return "\n".join([
        f"imported {r['source']} -> {r['out']}",
        f"layers {r['num_hidden_layers']}, hidden {r['hidden_size']}, MLP {mlp}, "
        f"heads {r['num_attention_heads']}/{r['num_key_value_heads']} KV, vocab {r['vocab_size']}"
        f"{', tied embeddings' if r['tie_word_embeddings'] else ''}",
        f"params {r['params']:,} (float32)",
        f"tensor types: {types}",
        f"sha256 {r['sha256']}",
    ])  # fmt: skip
