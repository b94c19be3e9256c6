"""Training and evaluation text: reading files, the offline corpus, tokenizing and chunking.

Formats a `--data` option accepts (chosen by the file's extension):

- `*.txt` (or any other extension): plain text, one document per file;
- `*.jsonl`: one JSON object per line with a text field (`text` unless told otherwise);
- `*.json`: Alpaca-format instructions, a list of `{"instruction", "input", "output"}`
  (what the paper fine-tuned on), each rendered with the Alpaca prompt template;
- `pydoc-train` / `pydoc-heldout` / `pydoc`: the training split, held-out split or
  whole of `pydoc_data.topics` (see `corpus.py`), an offline corpus every CPython ships.

Every problem raises `BadInputError` naming the file (and line) and what was wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .corpus import heldout_topics, pydoc_topics, train_topics
from .errors import BadInputError
from .jsonfiles import check_regular_file, parse_json
from .model.families import resolve_model_path

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{with_input}. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n{output}"
)
BUILTIN_CORPORA = ("pydoc", "pydoc-train", "pydoc-heldout")


def read_texts(source: str | Path, text_field: str = "text") -> list[str]:
    """Documents of a data file (format by extension) or a built-in corpus name."""
    if str(source) in BUILTIN_CORPORA:
        return _builtin_texts(str(source))
    path = Path(source)
    text = _read_file(path)
    if path.suffix == ".jsonl":
        texts = _jsonl_texts(text, path, text_field)
    elif path.suffix == ".json":
        texts = _alpaca_texts(text, path)
    else:
        texts = [text]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise BadInputError(f"{path}: contains no text")
    return texts


def _builtin_texts(name: str) -> list[str]:
    pick = {"pydoc": pydoc_topics, "pydoc-train": train_topics, "pydoc-heldout": heldout_topics}[name]
    return list(pick().values())


def _read_file(path: Path) -> str:
    check_regular_file(path, "data file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such data file (or built-in corpus: {', '.join(BUILTIN_CORPORA)})") from None
    except UnicodeDecodeError as err:
        raise BadInputError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise BadInputError(f"{path}: cannot read data file ({err.strerror})") from None


def _jsonl_texts(text: str, path: Path, text_field: str) -> list[str]:
    texts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record = parse_json(line, f"{path}:{number}")
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise BadInputError(f"{path}:{number}: expected a JSON object with a string field '{text_field}'")
        texts.append(record[text_field])
    return texts


def _alpaca_texts(text: str, path: Path) -> list[str]:
    records = parse_json(text, str(path))
    if not isinstance(records, list):
        raise BadInputError(f"{path}: Alpaca data must be a JSON list of {{instruction, input, output}} objects")
    return [format_alpaca(record, f"{path}: record {i}") for i, record in enumerate(records)]


def format_alpaca(record: Any, source: str) -> str:
    """One Alpaca record rendered with the Stanford Alpaca prompt template."""
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("instruction", "output")):
        raise BadInputError(f"{source}: expected an object with string fields 'instruction' and 'output'")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise BadInputError(f"{source}: field 'input' must be a string")
    return ALPACA_PROMPT.format(
        with_input=", paired with an input that provides further context" if extra else "",
        instruction=record["instruction"],
        input_block=f"### Input:\n{extra}\n\n" if extra else "",
        output=record["output"],
    )


# ---- tokenizer ------------------------------------------------------------------------------


def load_tokenizer(model_dir: str | Path):
    """The `tokenizers.Tokenizer` of a model directory (or built-in name) from its `tokenizer.json`."""
    from tokenizers import Tokenizer

    path = resolve_model_path(model_dir)
    file = (path if path.is_dir() else path.parent) / "tokenizer.json"
    if not file.is_file():
        raise BadInputError(f"{model_dir}: no tokenizer.json in the model directory")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as err:  # tokenizers raises a plain Exception on a malformed file
        raise BadInputError(f"{file}: cannot read tokenizer ({err})") from None


def tokenize(texts: Sequence[str], tokenizer, eos_id: int | None) -> list[int]:
    """All documents as one token stream, each followed by `eos_id` (when given)."""
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        ids.extend(encoding.ids)
        if eos_id is not None:
            ids.append(eos_id)
    return ids


def chunk(ids: Sequence[int], seq_len: int, max_tokens: int | None = None):
    """Non-overlapping rows of `seq_len` tokens (a `[rows, seq_len]` int64 tensor); the tail is dropped."""
    import torch

    if max_tokens is not None:
        ids = ids[:max_tokens]
    rows = len(ids) // seq_len
    if rows == 0:
        raise BadInputError(f"the data has {len(ids)} tokens, fewer than one sequence of {seq_len}")
    return torch.tensor(list(ids[: rows * seq_len]), dtype=torch.long).view(rows, seq_len)
