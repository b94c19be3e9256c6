"""The embedded default's offline corpus, tokenizer, held-out split and multiple-choice task.

The corpus is `pydoc_data.topics` (~465k characters of English technical prose that every
CPython ships). Topics are split by a hash of their name, so the split does not depend on the
order or number of topics; since topics differ between Python versions, the held-out text and
the task built from it are shipped as files (`heldout.txt`, `mc_task.jsonl`).

Rebuild the tokenizer, held-out text and task of `assets/tiny/` with::

    python -m llamanas_deploy.corpus llamanas_deploy/assets/tiny
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

from .jsonfiles import write_text

HELDOUT_EVERY = 10  # a topic is held out when sha256(name) % HELDOUT_EVERY == 0
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2: pad, bos, eos
TASK_SEED = 0
TASK_EXAMPLES = 300
TASK_CHOICES = 4
CONTEXT_WORDS = 24
CONTINUATION_WORDS = 2


def pydoc_topics() -> dict[str, str]:
    """All topics, sorted by name."""
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


def is_heldout(name: str) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % HELDOUT_EVERY == 0


def train_topics() -> dict[str, str]:
    return {k: v for k, v in pydoc_topics().items() if not is_heldout(k)}


def heldout_topics() -> dict[str, str]:
    return {k: v for k, v in pydoc_topics().items() if is_heldout(k)}


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer (GPT-2 style, no prefix space) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def build_task(documents: list[str], n: int = TASK_EXAMPLES, seed: int = TASK_SEED) -> list[dict]:
    """Choose the true continuation of a passage among distractors taken from other documents.

    Context: `CONTEXT_WORDS` words; choices: `CONTINUATION_WORDS` words each, all with the true
    continuation's leading whitespace so that whitespace gives nothing away. Distractors come
    from other documents (topics), so the context is what tells them apart.
    """
    import numpy as np

    words = [re.findall(r"\s*\S+", doc) for doc in documents]
    span = CONTEXT_WORDS + CONTINUATION_WORDS
    places = [(d, i) for d, doc in enumerate(words) for i in range(len(doc) - span)]
    rng = np.random.default_rng(seed)
    examples = []
    for index in sorted(rng.choice(len(places), size=n, replace=False).tolist()):
        d, start = places[index]
        context = "".join(words[d][start : start + CONTEXT_WORDS]).lstrip()
        lead = re.match(r"\s*", words[d][start + CONTEXT_WORDS]).group()
        choices = [_continuation(words[d], start + CONTEXT_WORDS, lead)]
        while len(choices) < TASK_CHOICES:
            other_doc, other = places[int(rng.integers(len(places)))]
            candidate = _continuation(words[other_doc], other, lead)
            if other_doc != d and candidate not in choices:
                choices.append(candidate)
        answer = int(rng.integers(TASK_CHOICES))
        choices[0], choices[answer] = choices[answer], choices[0]
        examples.append({"context": context, "choices": choices, "answer": answer})
    return examples


def _continuation(words: list[str], start: int, lead: str) -> str:
    return lead + "".join(words[start : start + CONTINUATION_WORDS]).lstrip()


def write_assets(out_dir: str | Path) -> dict:
    """Write tokenizer files, `heldout.txt`, `mc_task.jsonl` and `corpus.json` into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = train_topics(), heldout_topics()
    heldout_text = "\n\n".join(heldout.values())
    tokenizer = train_tokenizer(list(train.values()))
    task = build_task(list(heldout.values()))
    write_text(out / "tokenizer.json", tokenizer.to_str(pretty=True))
    write_text(out / "tokenizer_config.json", json.dumps(_tokenizer_config(), indent=2) + "\n")
    write_text(out / "heldout.txt", heldout_text)
    write_text(out / "mc_task.jsonl", "".join(json.dumps(ex) + "\n" for ex in task))
    info = {
        "schema_version": 1,
        "source": "pydoc_data.topics",
        "python": sys.version.split()[0],
        "split": f"topic held out when sha256(name) % {HELDOUT_EVERY} == 0",
        "train_topics": len(train),
        "train_chars": sum(len(t) for t in train.values()),
        "heldout_topics": sorted(heldout),
        "heldout_chars": len(heldout_text),
        "tokenizer": {"type": "byte-level BPE", "vocab_size": tokenizer.get_vocab_size()},
        "mc_task": {"examples": len(task), "choices": TASK_CHOICES, "seed": TASK_SEED},
    }
    write_text(out / "corpus.json", json.dumps(info, indent=2) + "\n")
    return info


def _tokenizer_config() -> dict:
    pad, bos, eos = SPECIAL_TOKENS
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "add_bos_token": False,
        "model_max_length": 1024,
        "clean_up_tokenization_spaces": False,
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m llamanas_deploy.corpus OUT_DIR")
    print(json.dumps(write_assets(sys.argv[1]), indent=2))
