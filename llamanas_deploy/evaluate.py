"""Accuracy of a sub-network, measured inside the super-network (weight views, no copy).

- `perplexity(supernet, subnet, token_ids)`: exp of the mean next-token loss on held-out text,
  over non-overlapping windows of `seq_len` tokens.
- `multiple_choice(supernet, subnet, task)`: log-likelihood scoring, as lm-eval scores ARC,
  MMLU, TruthfulQA MC1 and WinoGrande: each choice is scored by the summed log-probability of
  its tokens after the context; `acc` picks the highest sum, `acc_norm` the highest sum per
  byte of the choice.

The search calls these hundreds of times: pass the held-out ids / the tokenized task once
(`load_heldout`, `load_task`) and bound the work with `max_tokens` / `max_examples`.
`evaluate_subnet(model, space, subnet, EvalSettings(...))` is one evaluation from files, as
`llamanas evaluate` runs it.

Task files are JSON lines: `{"context": str, "choices": [str, ...], "answer": int}`.

A model directory's own `heldout.txt` / `mc_task.jsonl` come first; a model without them (one
imported from GGUF, say) is judged on the toolkit's shipped ones (`SHIPPED_DIR`: Python's
reference text held out from every training split, and its multiple-choice task), re-tokenized
with the model's own tokenizer: real text, never random token ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .data import chunk, load_tokenizer, read_texts, tokenize
from .errors import BadInputError
from .jsonfiles import parse_json
from .model.families import resolve_model_path
from .progress import Callback, report
from .space import SearchSpace, load_space
from .subnet_config import SubnetConfig

if TYPE_CHECKING:
    from .model.supernet import SuperNetwork

HELDOUT_FILE = "heldout.txt"
TASK_FILE = "mc_task.jsonl"
SHIPPED_DIR = Path(__file__).resolve().parent / "assets" / "tiny"  # text and task files, tokenizer-free
LOWER_IS_BETTER = ("perplexity", "loss")
MC_METRICS = ("acc_norm", "acc")  # length-normalized or raw log-likelihood accuracy


@dataclass(frozen=True)
class EvalResult:
    metric: str
    value: float
    subnet_id: str
    num_tokens: int | None = None
    num_examples: int | None = None
    details: dict[str, float] = field(default_factory=dict)
    subnet: SubnetConfig | None = None  # set by `evaluate_subnet`, with the space it belongs to
    space_id: str | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.metric, "value": self.value, "subnet_id": self.subnet_id}
        out |= {k: v for k, v in (("num_tokens", self.num_tokens), ("num_examples", self.num_examples)) if v is not None}
        out |= {"higher_is_better": self.higher_is_better, "details": self.details}
        return out | ({"subnet": self.subnet.to_dict(), "space_id": self.space_id} if self.subnet is not None else {})


# ---- perplexity -----------------------------------------------------------------------------


def perplexity(
    supernet,
    subnet: SubnetConfig,
    token_ids,
    seq_len: int = 128,
    batch_size: int = 16,
    max_tokens: int | None = None,
) -> EvalResult:
    """Held-out perplexity of `subnet`; `token_ids` is a flat id list or a `[rows, seq_len]` tensor."""
    import torch
    import torch.nn.functional as F

    rows = token_ids if isinstance(token_ids, torch.Tensor) and token_ids.dim() == 2 else chunk(token_ids, seq_len)
    if max_tokens is not None:
        rows = rows[: max(1, max_tokens // rows.shape[1])]
    nll, count = 0.0, 0
    with inference(supernet, subnet) as model:
        for batch in rows.split(batch_size):
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            targets = batch[:, 1:]
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
            count += targets.numel()
    loss = nll / count
    return EvalResult("perplexity", math.exp(loss), subnet.id, num_tokens=count, details={"loss": loss})


class inference:
    """`with inference(supernet, subnet) as model`: the sub-network, eval mode, no autograd."""

    def __init__(self, supernet, subnet: SubnetConfig):
        import torch

        self.supernet, self.subnet = supernet, subnet
        self.no_grad = torch.inference_mode()
        self.activation = supernet.activate(subnet)

    def __enter__(self):
        self.was_training = self.supernet.model.training
        self.no_grad.__enter__()
        model = self.activation.__enter__()
        return model.eval()

    def __exit__(self, *exc) -> None:
        self.activation.__exit__(*exc)
        self.no_grad.__exit__(*exc)
        self.supernet.model.train(self.was_training)


# ---- multiple choice ------------------------------------------------------------------------


@dataclass(frozen=True)
class MCExample:
    context: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class TokenizedTask:
    """A task ready to score: per example, the context ids and each choice's continuation ids."""

    examples: tuple[MCExample, ...]
    context_ids: tuple[tuple[int, ...], ...]
    choice_ids: tuple[tuple[tuple[int, ...], ...], ...]
    source: str

    def __len__(self) -> int:
        return len(self.examples)


def read_task(path: str | Path) -> list[MCExample]:
    """Examples of a JSONL task file; every malformed line is reported with its number."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"{path}: cannot read task file ({getattr(err, 'strerror', None) or err})") from None
    examples = [_parse_example(line, f"{path}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    if not examples:
        raise BadInputError(f"{path}: the task has no examples")
    return examples


def _parse_example(line: str, source: str) -> MCExample:
    record = parse_json(line, source)
    if not isinstance(record, dict) or set(record) - {"context", "choices", "answer", "id"}:
        raise BadInputError(f"{source}: expected an object with keys context, choices, answer")
    context, choices, answer = record.get("context"), record.get("choices"), record.get("answer")
    if not isinstance(context, str) or not context:
        raise BadInputError(f"{source}: 'context' must be a non-empty string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise BadInputError(f"{source}: 'choices' must be a list of at least 2 non-empty strings")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        raise BadInputError(f"{source}: 'answer' must be an index into choices (0..{len(choices) - 1}), got {answer!r}")
    return MCExample(context, tuple(choices), answer)


def tokenize_task(examples: Sequence[MCExample], tokenizer, source: str = "task") -> TokenizedTask:
    """Continuation ids are those of `context + choice` past the context's ids (as lm-eval does)."""
    contexts, choices = [], []
    for ex in examples:
        ctx = tuple(tokenizer.encode(ex.context, add_special_tokens=False).ids)
        conts = []
        for choice in ex.choices:
            whole = tokenizer.encode(ex.context + choice, add_special_tokens=False).ids
            cont = whole[len(ctx) :] if tuple(whole[: len(ctx)]) == ctx else whole
            conts.append(tuple(cont) or tuple(tokenizer.encode(choice, add_special_tokens=False).ids))
        contexts.append(ctx)
        choices.append(tuple(conts))
    return TokenizedTask(tuple(examples), tuple(contexts), tuple(choices), source)


def multiple_choice(
    supernet,
    subnet: SubnetConfig,
    task: TokenizedTask,
    batch_size: int = 64,
    max_examples: int | None = None,
    metric: str = "acc_norm",
) -> EvalResult:
    """Accuracy of `subnet` on `task`; `metric` is `acc` (raw sums) or `acc_norm` (per byte)."""
    if metric not in MC_METRICS:
        raise BadInputError(f"{metric!r} is not one of {sorted(MC_METRICS)}", param="metric")
    n = len(task) if max_examples is None else min(max_examples, len(task))
    max_len = int(supernet.config.get("max_position_embeddings", 2048))
    pairs = [(i, j) for i in range(n) for j in range(len(task.examples[i].choices))]
    scores = _score_pairs(supernet, subnet, task, pairs, batch_size, max_len)
    acc = acc_norm = 0
    for i in range(n):
        ex = task.examples[i]
        raw = [scores[(i, j)] for j in range(len(ex.choices))]
        norm = [s / len(c.encode()) for s, c in zip(raw, ex.choices)]
        acc += _argmax(raw) == ex.answer
        acc_norm += _argmax(norm) == ex.answer
    details = {"acc": acc / n, "acc_norm": acc_norm / n, "chance": sum(1 / len(e.choices) for e in task.examples[:n]) / n}
    return EvalResult(metric, details[metric], subnet.id, num_examples=n, details=details)


def _score_pairs(supernet, subnet, task: TokenizedTask, pairs, batch_size: int, max_len: int) -> dict:
    """Summed log-probability of each (example, choice) continuation."""
    sequences = [(task.context_ids[i] + task.choice_ids[i][j], len(task.choice_ids[i][j])) for i, j in pairs]
    scored = score_continuations(supernet, subnet, sequences, batch_size, max_len)
    return {pair: logprob for pair, (logprob, _) in zip(pairs, scored)}


def score_continuations(
    supernet, subnet: SubnetConfig, sequences: Sequence[tuple[list[int], int]], batch_size: int, max_len: int
) -> list[tuple[float, bool]]:
    """(summed log-probability, all tokens greedy) of the last `n` tokens of each `(ids, n)`.

    Sequences are cut from the left to `max_len + 1` tokens and batched longest first.
    """
    import torch

    seqs = [(list(ids)[-(max_len + 1) :], n) for ids, n in sequences]
    order = sorted(range(len(seqs)), key=lambda k: -len(seqs[k][0]))
    out: list[tuple[float, bool]] = [(0.0, False)] * len(seqs)
    with inference(supernet, subnet) as model:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(seqs[k][0]) for k in rows) - 1
            # right padding: under causal attention real tokens never see the padding after them
            inputs = torch.zeros(len(rows), width, dtype=torch.long)
            for row, k in enumerate(rows):
                ids = seqs[k][0][:-1]
                inputs[row, : len(ids)] = torch.tensor(ids)
            logprobs = model(input_ids=inputs, use_cache=False).logits.float().log_softmax(-1)
            for row, k in enumerate(rows):
                ids, cont_len = seqs[k]
                picked = logprobs[row, len(ids) - 1 - cont_len : len(ids) - 1]
                targets = torch.tensor(ids[-cont_len:])
                greedy = bool((picked.argmax(-1) == targets).all())
                out[k] = (picked.gather(-1, targets[:, None]).sum().item(), greedy)
    return out


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


# ---- the embedded default's held-out text and task --------------------------------------------


def load_heldout(model: str | Path = "tiny", max_tokens: int | None = None) -> list[int]:
    """Token ids of a model directory's shipped held-out text (`heldout.txt`)."""
    text = heldout_file(model).read_text(encoding="utf-8")
    tokenizer = load_tokenizer(model)
    ids = tokenize([text], tokenizer, eos_id=None)
    return ids if max_tokens is None else ids[:max_tokens]


def load_task(model: str | Path = "tiny", path: str | Path | None = None, max_examples: int | None = None) -> TokenizedTask:
    """A multiple-choice task (default: the model's shipped `mc_task.jsonl`), tokenized for `model`."""
    file = Path(path) if path is not None else _model_file(model, TASK_FILE)
    examples = read_task(file)[:max_examples]
    return tokenize_task(examples, load_tokenizer(model), str(file))


def heldout_file(model: str | Path) -> Path:
    """The held-out text a model is judged on: its own `heldout.txt`, else the toolkit's shipped one."""
    return _model_file(model, HELDOUT_FILE)


def _model_file(model: str | Path, name: str) -> Path:
    path = resolve_model_path(model)
    file = (path if path.is_dir() else path.parent) / name
    return file if file.is_file() else SHIPPED_DIR / name


# ---- one sub-network, as `llamanas evaluate` measures it ----------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    """What `evaluate_subnet` measures: held-out perplexity (default), or accuracy on `task`."""

    data: str | Path | None = None  # text for perplexity (.txt, .jsonl, Alpaca .json, corpus); None: heldout.txt
    task: str | Path | None = None  # a multiple-choice JSONL task: accuracy instead of perplexity
    text_field: str = "text"  # the field holding the text in JSONL data
    seq_len: int = 128  # perplexity window
    max_tokens: int | None = None  # evaluate at most this many tokens
    max_examples: int | None = None  # score at most this many task examples
    metric: str = "acc_norm"  # multiple choice: one of MC_METRICS

    def __post_init__(self) -> None:
        if self.data is not None and self.task is not None:
            raise BadInputError("give data (perplexity) or a task (accuracy), not both", param="task")
        for name, low in (("seq_len", 2), ("max_tokens", 2), ("max_examples", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise BadInputError(f"expected an integer >= {low}, got {value!r}", param=name)
        if self.metric not in MC_METRICS:
            raise BadInputError(f"{self.metric!r} is not one of {sorted(MC_METRICS)}", param="metric")


def evaluate_subnet(
    supernet: SuperNetwork | str | Path,
    space: SearchSpace | str | Path,
    subnet: SubnetConfig | str,
    settings: EvalSettings = EvalSettings(),
    *,
    callback: Callback = None,
) -> EvalResult:
    """Perplexity or multiple-choice accuracy of one sub-network inside the super-network.

    `supernet`: a `SuperNetwork`, or its directory / built-in name; `space`: a `SearchSpace` or its
    name / file; `subnet`: what `SearchSpace.resolve` takes (a `SubnetConfig`, a search's `FrontMember`,
    'largest', ...).
    """
    from .model.supernet import SuperNetwork, load_supernet

    space = load_space(space)
    subnet = space.resolve(subnet, "subnet")
    source = supernet.source if isinstance(supernet, SuperNetwork) else supernet
    if settings.task is not None:
        inputs = load_task(source, settings.task, settings.max_examples)
    else:
        inputs = _text_ids(source, settings.data, settings.text_field) if settings.data else load_heldout(source)
    supernet = load_supernet(supernet, space)
    report(callback, "evaluate", message=f"evaluating sub-network {subnet.id} ({subnet.num_layers} layers) of {supernet.source}")
    if settings.task is not None:
        result = multiple_choice(supernet, subnet, inputs, metric=settings.metric)
    else:
        result = perplexity(supernet, subnet, inputs, seq_len=settings.seq_len, max_tokens=settings.max_tokens)
    return replace(result, subnet=subnet, space_id=space.id)


def _text_ids(model, data: str | Path, text_field: str) -> list[int]:
    tokenizer = load_tokenizer(model)
    return tokenize(read_texts(str(data), text_field), tokenizer, tokenizer.token_to_id("</s>"))
