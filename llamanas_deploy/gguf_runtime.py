"""Generation from a GGUF artifact through llama.cpp (llama-cpp-python, imported only here and lazily).

`LlamaCppDecoder` answers `runtime.generate` as an `OrtDecoder` does (`empty_past`, `forward`), so
the loop, its timing and the sampling (`runtime.Sampling`: temperature, top-k, seed; the token is
picked from llama.cpp's logits by `runtime.pick_token`) are the ONNX path's. Text goes in and out
through the tokenizer the file carries, and `chat` through the chat template it carries.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from .concepts import check_threads
from .errors import BadInputError, LlamanasError
from .runtime import Artifact, GeneratedText, Sampling, check_room, generate, render_chat


def load_llama(path: Path, threads: int | None, context: int = 0, *, logits_all: bool = False,
               vocab_only: bool = False, error: type[LlamanasError] = LlamanasError):  # fmt: skip
    """llama-cpp-python's `Llama` on the GGUF file `path`: `threads` for prompt and decode alike, `context`
    positions (0: the context the file was made for; else a prompt of up to that many is one batch),
    logits of every position only with `logits_all`, no weights with `vocab_only`; `error`, in one line,
    when llama.cpp cannot load it."""
    from llama_cpp import Llama

    batch = {"n_batch": context} if context else {}
    try:
        return Llama(model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                     logits_all=logits_all, vocab_only=vocab_only, verbose=False, **batch)  # fmt: skip
    except ValueError as err:  # llama-cpp-python's one error for a file llama.cpp cannot load
        raise error(f"{path}: llama.cpp cannot load the GGUF file ({err})") from None


def last_logits(llm) -> np.ndarray:
    """The logits of the last position llama.cpp evaluated (a view of its buffer: copy to keep)."""
    import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))


class GGUFText:
    """The tokenizer, chat template and trained context a GGUF file carries: `llm`, or llama.cpp on the
    file without its weights."""

    def __init__(self, path: Path, llm=None):
        self.path = path
        self.llm = llm if llm is not None else _vocabulary(path)

    @property
    def trained_context(self) -> int:
        """The positions the model was made for (the file's `<architecture>.context_length`)."""
        metadata = self.llm.metadata
        return int(metadata[f"{metadata['general.architecture']}.context_length"])

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`: the special tokens it spells are parsed, BOS added if the file says so."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, special tokens left out."""
        return self.llm.detokenize(ids, special=False).decode("utf-8", errors="replace")

    def chat_prompt(self, message: str) -> str:
        """`message` as one user turn in the file's chat template (`runtime.render_chat`)."""
        template = self.llm.metadata.get("tokenizer.chat_template")
        if template is None:
            raise BadInputError(f"{self.path}: the artifact has no chat template (its model had none); use --prompt")
        specials = {"bos_token": self._text(self.llm.token_bos()), "eos_token": self._text(self.llm.token_eos())}
        return render_chat(template, message, specials, str(self.path))

    def _text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""


def _vocabulary(path: Path):
    """llama.cpp on the GGUF file `path` without its weights (a vocabulary opens with a one-position context)."""
    with contextlib.redirect_stderr(io.StringIO()):  # llama.cpp warns that a vocabulary has no trained context
        return load_llama(path, None, 1, vocab_only=True)


class LlamaCppDecoder(GGUFText):
    """llama.cpp on a GGUF file, one sequence, with `context` positions (0: the context the file was
    made for); `threads` for prompt and decode alike (None: llama-cpp-python's default)."""

    def __init__(self, path: Path, threads: int | None = None, context: int = 0):
        check_threads(threads)
        super().__init__(path, load_llama(path, threads, context))

    @property
    def context_length(self) -> int:
        return self.llm.n_ctx()

    def empty_past(self, batch: int) -> dict:
        """A new sequence: llama.cpp keeps the cache itself, the 'past' passed around is empty."""
        if batch != 1:
            raise BadInputError(f"llama.cpp decodes one sequence here; got batch size {batch}")
        self.llm.reset()
        return {}

    def forward(self, input_ids: np.ndarray, past: dict) -> tuple[np.ndarray, dict]:
        """Evaluate `input_ids` [1, T] after the cache; returns the last position's logits [1, 1, V]
        (all llama.cpp computes) and `past` unchanged."""
        self.llm.eval(input_ids[0].tolist())
        return last_logits(self.llm)[None, None].copy(), past


def generate_gguf_text(artifact: Artifact, prompt: str, max_new_tokens: int, sampling: Sampling,
                       threads: int | None, chat: bool) -> GeneratedText:  # fmt: skip
    """`runtime.generate_text` for a GGUF artifact: llama.cpp holds the prompt and the new tokens only,
    not the whole context the model was made for."""
    text = GGUFText(artifact.gguf_path)
    ids = text.encode(text.chat_prompt(prompt) if chat else prompt)
    check_room(len(ids), max_new_tokens, text.trained_context)
    decoder = LlamaCppDecoder(artifact.gguf_path, threads, context=len(ids) + max_new_tokens)
    out = generate(decoder, ids, max_new_tokens, sampling, artifact.eos_ids)
    return GeneratedText.of(out, text.decode(out.tokens))
