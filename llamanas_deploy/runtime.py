"""Inference on an exported artifact through ONNX Runtime alone: no torch, no transformers.

- `OrtDecoder`: one ORT session of a decoder with a KV cache (I/O names as in
  `onnx_model/config.py`): `forward` one call, `empty_past` for a prefill. On CUDA it runs
  through IO binding: the present KV comes back as OrtValues left on the device and is bound
  as the next step's past, so only token ids go up and logits come down (`host` copies a
  cache tensor to numpy when a caller needs its values).
- `generate`: greedy or sampled (temperature, top-k) generation through the cache, timed.
- `perplexity`: next-token perplexity on non-overlapping windows of a token stream.
- `open_artifact`: an artifact directory whose files still match its manifest, with its
  tokenizer (the `tokenizers` library reads `tokenizer.json`).
- `generate_text`: prompt text in, `GeneratedText` out (the continuation and its timing). A GGUF
  artifact runs through llama.cpp instead (`gguf_runtime`, imported only then): same loop, same result.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np

from .concepts import DEVICES, check_choice, check_threads
from .errors import BadInputError
from .jsonfiles import checked_object, field_error, read_json
from .onnx_model.artifact import GENAI_CONFIG, GGUF_KIND, MANIFEST, inside, read_manifest
from .onnx_model.fp16 import kv_dtype

_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
PROVIDERS = {device: _PROVIDER_NAMES[device] for device in DEVICES}  # ORT execution provider of each device
IO_BINDING_DEVICES = ("cuda",)  # where OrtDecoder keeps the KV cache on the device between steps


def session_options(threads: int | None):
    """ORT session options: full graph optimization; `threads` intra-op threads (None: ORT's default)."""
    import onnxruntime as ort

    check_threads(threads)

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def check_device(device: str) -> str:
    """The ORT execution provider for `device`; `BadInputError` when this onnxruntime lacks it."""
    import onnxruntime as ort

    provider = PROVIDERS[check_choice(device, DEVICES, "device")]
    if provider not in ort.get_available_providers():
        raise BadInputError(
            f"{device}: this onnxruntime ({ort.__version__}) has no {provider} "
            f"(available: {ort.get_available_providers()})",
            param="device",
        )
    return provider


class OrtDecoder:
    """An ORT session of a decoder exported with a KV cache.

    `io_binding`: run through `session.io_binding()`, the present KV left where the session
    computed it (OrtValues) and fed back as the next past without a host copy; default: on
    the devices in `IO_BINDING_DEVICES`. A past may mix numpy arrays and OrtValues.
    """

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None,
                 io_binding: bool | None = None):  # fmt: skip
        import onnxruntime as ort

        provider = check_device(device)
        self.path = Path(onnx_path)
        self.io_binding = device in IO_BINDING_DEVICES if io_binding is None else io_binding
        self._output_device = "cuda" if provider == PROVIDERS["cuda"] else "cpu"  # where bound KV outputs live
        self.session = ort.InferenceSession(str(self.path), session_options(threads), providers=[provider])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.output_names = [o.name for o in self.session.get_outputs()]
        first = inputs[self.past_names[0]].shape
        self.kv_dtype = kv_dtype(self.session)  # float16 in a CUDA (fp16) artifact
        self.num_kv_heads, self.head_dim = int(first[1]), int(first[3])
        self.vocab_size = int(self.session.get_outputs()[0].shape[2])

    @property
    def num_layers(self) -> int:
        return len(self.past_names) // 2

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """A KV cache of length 0, for a prefill."""
        empty = np.zeros((batch, self.num_kv_heads, 0, self.head_dim), dtype=self.kv_dtype)
        return {name: empty for name in self.past_names}

    def forward(
        self, input_ids: np.ndarray, past: dict[str, Any], attention_mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Logits of `input_ids` after `past`; returns (logits, the cache including these tokens).

        The returned cache is numpy arrays, or OrtValues on the session's device with IO binding.
        """
        batch, seq = input_ids.shape
        past_len = _shape(next(iter(past.values())))[2]
        if attention_mask is None:
            attention_mask = np.ones((batch, past_len + seq), dtype=np.int64)
        positions = np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq))
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask, "position_ids": positions}
        if self.io_binding:
            return self._run_bound(feeds, past)
        outputs = self.session.run(None, feeds | past)
        present = dict(zip(self.past_names, outputs[1:]))
        return outputs[0], present

    def _run_bound(self, feeds: dict[str, np.ndarray], past: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in past.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output(self.output_names[0], "cpu")  # the logits: tokens are picked on the host
        for name in self.output_names[1:]:
            binding.bind_output(name, self._output_device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), dict(zip(self.past_names, outputs[1:]))


def _shape(value: Any) -> tuple[int, ...]:
    """Shape of a numpy array or an OrtValue (whose `shape` is a method)."""
    return tuple(value.shape) if isinstance(value, np.ndarray) else tuple(value.shape())


def host(value: Any) -> np.ndarray:
    """A cache tensor as numpy: itself, or an OrtValue copied from its device."""
    return value if isinstance(value, np.ndarray) else value.numpy()


# ---- generation -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampling:
    """Greedy when `temperature` is 0; otherwise softmax(logits / T) over the `top_k` best (0: all)."""

    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):  # NaN too
            raise BadInputError(f"must be >= 0 and finite, got {self.temperature}", param="temperature")
        if self.top_k < 0:
            raise BadInputError(f"must be >= 0, got {self.top_k}", param="top_k")


@dataclass
class Generation:
    tokens: list[int]
    prefill_s: float
    decode_s: float
    prompt_tokens: int
    stopped_at_eos: bool = False

    @property
    def decode_tok_s(self) -> float:
        """New tokens after the first one, per second of decode steps."""
        steps = len(self.tokens) - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else float("nan")

    @property
    def total_tok_s(self) -> float:
        total = self.prefill_s + self.decode_s
        return len(self.tokens) / total if total > 0 else float("nan")


def generate(
    decoder: OrtDecoder,
    prompt: Sequence[int],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    eos_ids: Collection[int] = (),
) -> Generation:
    """Prefill `prompt`, then one token at a time through the KV cache, until a token of `eos_ids`."""
    if not prompt:
        raise BadInputError("the prompt has no tokens")
    if max_new_tokens < 1:
        raise BadInputError(f"must be >= 1, got {max_new_tokens}", param="max_new_tokens")
    rng = np.random.default_rng(sampling.seed)
    start = time.perf_counter()
    logits, past = decoder.forward(np.array([prompt], dtype=np.int64), decoder.empty_past(1))
    token = pick_token(logits[0, -1], sampling, rng)
    prefill_s = time.perf_counter() - start
    tokens, start = [token], time.perf_counter()
    while len(tokens) < max_new_tokens and token not in eos_ids:
        logits, past = decoder.forward(np.array([[token]], dtype=np.int64), past)
        token = pick_token(logits[0, -1], sampling, rng)
        tokens.append(token)
    decode_s = time.perf_counter() - start
    return Generation(tokens, prefill_s, decode_s, len(prompt), stopped_at_eos=token in eos_ids)


def pick_token(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    if sampling.temperature == 0:
        return int(np.argmax(logits))
    logits = logits.astype(np.float64)
    with np.errstate(over="ignore"):  # <= 0: a tiny temperature gives -inf (probability 0), never inf - inf
        scaled = (logits - logits.max()) / sampling.temperature
    if 0 < sampling.top_k < scaled.size:
        cutoff = np.partition(scaled, -sampling.top_k)[-sampling.top_k]
        scaled = np.where(scaled >= cutoff, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    return int(rng.choice(scaled.size, p=probs / probs.sum()))


# ---- perplexity --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    loss: float
    num_tokens: int


PERPLEXITY_LOGITS = 1 << 24  # logits per batch of windows (64 MiB): a 49k vocabulary takes 2 windows of 128 at a time


def perplexity(decoder: OrtDecoder, token_ids: Sequence[int], seq_len: int = 128, batch_size: int | None = None) -> PerplexityResult:
    """Next-token perplexity over non-overlapping windows of `seq_len` tokens (the tail is dropped),
    `batch_size` windows per call (default: up to 8, as many as `PERPLEXITY_LOGITS` logits hold)."""
    rows = len(token_ids) // seq_len
    if rows == 0:
        raise BadInputError(f"the data has {len(token_ids)} tokens, fewer than one window of {seq_len}")
    if batch_size is None:
        batch_size = max(1, min(8, PERPLEXITY_LOGITS // (seq_len * decoder.vocab_size)))
    windows = np.asarray(token_ids[: rows * seq_len], dtype=np.int64).reshape(rows, seq_len)
    nll, count = 0.0, 0
    for start in range(0, rows, batch_size):
        batch = windows[start : start + batch_size]
        logits, _ = decoder.forward(batch, decoder.empty_past(len(batch)))
        nll += summed_nll(logits[:, :-1], batch[:, 1:])
        count += batch[:, 1:].size
    loss = nll / count
    return PerplexityResult(math.exp(loss), loss, count)


def summed_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed negative log-likelihood of `targets` [B, T] under `logits` [B, T, V].

    The exponentials stay in the logits' dtype (shifted by the row's peak, each is in (0, 1]) and
    are summed in float64: as exact as a float64 copy of the logits, 10x faster at a 49k vocabulary.
    """
    peak = logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(logits - peak).sum(axis=-1, dtype=np.float64)) + peak[..., 0]
    chosen = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return float((log_z - chosen).sum())


# ---- artifacts -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Artifact:
    """An artifact directory whose files matched its manifest when opened (or that `export` just made)."""

    directory: Path
    manifest: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """What `llamanas export --json` prints."""
        return {"artifact": str(self.directory), **self.manifest}

    @property
    def is_gguf(self) -> bool:
        """A GGUF artifact (llama.cpp), not an ONNX one (an ONNX export measures before its manifest has a kind)."""
        return self.manifest.get("kind") == GGUF_KIND

    @property
    def onnx_path(self) -> Path:
        return self._path(self.manifest["onnx"]["file"])

    @property
    def gguf_path(self) -> Path:
        return self._path(self.manifest["gguf"]["file"])

    def _path(self, name: str) -> Path:
        """A file the manifest lists, inside the directory (`onnx_model.artifact.inside`); a manifest
        without a `files` table is one the export is still building (it measures before sealing)."""
        if "files" in self.manifest and name not in self.manifest["files"]:
            raise BadInputError(f"{self.directory / MANIFEST}: '{name}' is not covered by a sha256 in 'files'")
        return inside(self.directory, name)

    @property
    def eos_ids(self) -> frozenset[int]:
        """The tokens that end a generation: the manifest's `tokens.eos_token_id`, one id or several."""
        eos = self.manifest.get("tokens", {}).get("eos_token_id")
        return frozenset([] if eos is None else eos if isinstance(eos, list) else [eos])

    @property
    def context_length(self) -> int:
        """Positions the model holds, prompt and generated tokens together (its genai_config.json,
        checked against the allowlist when the artifact was opened)."""
        return int(read_json(self._path(GENAI_CONFIG), "genai config")["model"]["context_length"])

    def decoder(self, device: str | None = None, threads: int | None = None) -> OrtDecoder:
        return OrtDecoder(self.onnx_path, device or self.manifest["device"], threads)

    def chat_prompt(self, message: str) -> str:
        """`message` as one user turn in the artifact's chat template (`render_chat`); `BadInputError`
        when the artifact has none."""
        name = "tokenizer_config.json"
        source = str(self.directory / name)
        config = read_json(self._path(name), "tokenizer config") if name in self.manifest.get("files", {}) else {}
        template = checked_object(config, source, "").get("chat_template")
        if template is None:
            raise BadInputError(f"{self.directory}: the artifact has no chat template (its model had none); use --prompt")
        if not isinstance(template, str):
            raise field_error(source, "chat_template", "a string", template)
        specials = {key: config.get(key) if isinstance(config.get(key), str) else "" for key in ("bos_token", "eos_token")}
        return render_chat(template, message, specials, source)

    def tokenizer(self):
        """The artifact's `tokenizers.Tokenizer`; `BadInputError` when it ships none."""
        from tokenizers import Tokenizer

        if "tokenizer.json" not in self.manifest.get("files", {}):
            raise BadInputError(f"{self.directory}: the artifact has no tokenizer.json (its model directory had none)")
        return Tokenizer.from_file(str(self._path("tokenizer.json")))


def render_chat(template: str, message: str, specials: dict[str, str], source: str) -> str:
    """`message` as one user turn in the chat `template` (from `source`), ready for the assistant's reply.

    The template is artifact content: it is rendered in Jinja's sandbox, which gives it no access
    to Python objects beyond the values passed in (`specials`: `bos_token`, `eos_token`).
    """
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        return ImmutableSandboxedEnvironment().from_string(template).render(
            messages=[{"role": "user", "content": message}], add_generation_prompt=True, **specials
        )
    except TemplateError as err:
        raise BadInputError(f"{source}: its chat template cannot be rendered ({err})") from None


def open_artifact(directory: str | Path) -> Artifact:
    """Open an artifact; `BadInputError` when its manifest or a file changed since export, a file is
    missing, or a path it names leads out of the directory (`onnx_model.artifact.read_manifest`)."""
    directory = Path(directory)
    return Artifact(directory, read_manifest(directory))


DEFAULT_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class GeneratedText:
    """Text generated from a prompt, and how fast (`to_dict()`: what `llamanas generate --json` prints)."""

    text: str  # the continuation, without the prompt
    prompt_tokens: int
    tokens: list[int]
    new_tokens: int
    prefill_ms: float
    decode_tok_s: float
    tok_s: float
    stopped_at_eos: bool

    @classmethod
    def of(cls, out: Generation, text: str) -> GeneratedText:
        """`out` with its tokens' `text`."""
        return cls(
            text=text,
            prompt_tokens=out.prompt_tokens,
            tokens=out.tokens,
            new_tokens=len(out.tokens),
            prefill_ms=out.prefill_s * 1e3,
            decode_tok_s=out.decode_tok_s,
            tok_s=out.total_tok_s,
            stopped_at_eos=out.stopped_at_eos,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_room(prompt_tokens: int, max_new_tokens: int, positions: int) -> None:
    """`BadInputError` when the prompt and the new tokens exceed the model's `positions`."""
    if prompt_tokens + max_new_tokens > positions:
        raise BadInputError(f"{max_new_tokens}: the prompt's {prompt_tokens} tokens and the new ones exceed the model's "
                            f"{positions} positions", param="max_new_tokens")  # fmt: skip


def generate_text(
    artifact_dir: str | Path,
    prompt: str,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    sampling: Sampling = Sampling(),
    threads: int | None = None,
    chat: bool = False,
) -> GeneratedText:
    """Generate from `prompt` (text) with the artifact's own tokenizer, through ONNX Runtime alone
    (a GGUF artifact: through llama.cpp, `gguf_runtime`).

    `chat`: `prompt` is a user's message, put in the artifact's chat template first. The timing
    covers the runtime's calls only (prefill, then decode steps); `threads`: intra-op threads (None:
    the runtime's default).
    """
    opened = open_artifact(artifact_dir)
    if opened.is_gguf:
        from .gguf_runtime import generate_gguf_text

        return generate_gguf_text(opened, prompt, max_new_tokens, sampling, threads, chat)
    prompt = opened.chat_prompt(prompt) if chat else prompt
    tokenizer = opened.tokenizer()
    ids = tokenizer.encode(prompt).ids
    check_room(len(ids), max_new_tokens, opened.context_length)
    out = generate(opened.decoder(threads=threads), ids, max_new_tokens, sampling, opened.eos_ids)
    return GeneratedText.of(out, tokenizer.decode(out.tokens))
