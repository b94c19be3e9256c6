"""llama.cpp (through llama-cpp-python, the `llamacpp` extra) driven like the benchmarks' ONNX loops.

`LlamaCppLoop` runs a GGUF file with the same prompt, greedy decoding and clock as
`export_vs_builder.OrtLoop`, and offers what `llamanas_deploy.runtime.perplexity` calls
(`forward` on a batch of windows from an empty cache, `empty_past`, `vocab_size`), so its held-out
perplexity is computed by the same code on the same token ids. Token ids go in as they are (no BOS
added): a GGUF imported by `llamanas import-gguf` has the very vocabulary of the file it came from.

    pip install -e '.[llamacpp]'   # builds llama.cpp from source (about 8 minutes on 2 cores)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

CONTEXT = 1024  # tokens: above every prompt + generation and perplexity window the benchmarks use


class LlamaCppLoop:
    """A GGUF in llama.cpp, `threads` threads for prompt and decode alike, logits for every position."""

    def __init__(self, gguf: Path, clock: Callable[[], float], threads: int = 1, context: int = CONTEXT):
        try:
            from llama_cpp import Llama
        except ImportError as error:
            raise SystemExit("llama-cpp-python is not installed: pip install -e '.[llamacpp]'") from error

        self.clock = clock
        self.llm = Llama(model_path=str(gguf), n_ctx=context, n_batch=context, n_threads=threads,
                         n_threads_batch=threads, logits_all=True, verbose=False)  # fmt: skip
        self.vocab_size = self.llm.n_vocab()

    def _eval(self, tokens: list[int]) -> np.ndarray:
        """Logits of the last of `tokens`, evaluated after what is already in the context."""
        self.llm.eval(tokens)
        return self.llm.scores[self.llm.n_tokens - 1]

    def run(self, prompt: list[int], new_tokens: int) -> dict:
        """What `OrtLoop.run` returns: prefill ms, decode ms per token, the greedy tokens."""
        self.llm.reset()
        start = self.clock()
        tokens = [int(self._eval(prompt).argmax())]
        prefill = self.clock() - start
        start = self.clock()
        while len(tokens) < new_tokens:
            tokens.append(int(self._eval([tokens[-1]]).argmax()))
        decode = self.clock() - start
        return {"prefill_ms": prefill * 1e3, "decode_ms": decode * 1e3 / (new_tokens - 1), "tokens": tokens}

    def empty_past(self, batch: int) -> None:
        return None

    def forward(self, ids: np.ndarray, past: None) -> tuple[np.ndarray, None]:
        """Logits [batch, seq, vocab] of each row from an empty context (what `runtime.perplexity` calls)."""
        rows = []
        for row in ids:
            self.llm.reset()
            self.llm.eval(row.tolist())
            rows.append(np.array(self.llm.scores[: len(row)], dtype=np.float32))
        return np.stack(rows), None
