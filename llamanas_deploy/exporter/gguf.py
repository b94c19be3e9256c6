"""GGUF export: a sub-network as a file llama.cpp runs, verified, in an artifact directory.

    model.gguf        the sub-network's weights, its architecture keys and its tokenizer
    manifest.json     what it is, how it was verified, its predicted and measured latency, sha256 of every file
                      (`onnx_model.artifact`)
    manifest.sha256   sha256 of manifest.json

`model.gguf_write` writes the file; `export_gguf` builds the artifact beside `out` (`jsonfiles.new_directory`),
and moves it into place only after llama.cpp passed the verification gate (`gguf_verify`) and, when asked,
measured it with the `llamacpp` backend's workloads (`measure.bench_decoder`, as `llamanas bench` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analytics import subnet_stats
from ..concepts import GGUF_PRECISIONS, check_choice, check_threads, max_threads
from ..data import read_texts
from ..jsonfiles import check_out_dir, new_directory
from ..model.gguf_write import GGUF_NAME, require_llama_cpp, write_gguf
from ..onnx_model.artifact import GGUF_KIND, write_manifest
from ..progress import Callback, report
from ..runtime import Artifact
from ..space import SearchSpace, load_space
from ..subnet_config import SubnetConfig
from .gguf_verify import DEFAULT_MAX_PPL_INCREASE_PCT, verify_gguf
from .measure import BenchSettings, artifact_backend_class, bench_decoder
from .pipeline import check_eval_tokens, checked_ppl_limit, eval_tokens
from .prediction import predicted_block

if TYPE_CHECKING:
    from ..model.supernet import SuperNetwork
    from ..predict.estimator import LatencyPredictor
    from ..search.results import FrontMember


@dataclass(frozen=True)
class GGUFSettings:
    """What to export and how to check it.

    `precision`: one of `GGUF_PRECISIONS`. `data`: held-out text for the checks (any source
    `data.read_texts` reads; default: the model directory's `heldout.txt`). `max_eval_tokens`: at
    most this many held-out tokens. `threads`: llama.cpp's threads, for prompt and decode alike
    (None: this machine's logical cores). `max_ppl_increase_pct`: the perplexity rise over the torch
    sub-network (in %) above which verification fails (None: the precision's default,
    `gguf_verify.DEFAULT_MAX_PPL_INCREASE_PCT`).
    """

    precision: str = "f16"
    data: str | None = None
    max_eval_tokens: int = 4096
    threads: int | None = None
    max_ppl_increase_pct: float | None = None

    def __post_init__(self) -> None:
        check_choice(self.precision, GGUF_PRECISIONS, "precision")
        check_eval_tokens(self.max_eval_tokens)
        object.__setattr__(self, "threads", check_threads(self.threads) or max_threads())
        limit = checked_ppl_limit(self.max_ppl_increase_pct, DEFAULT_MAX_PPL_INCREASE_PCT[self.precision])
        object.__setattr__(self, "max_ppl_increase_pct", limit)


def export_gguf(
    supernet: SuperNetwork | str | Path,
    space: SearchSpace | str | Path,
    subnet: SubnetConfig | FrontMember | str,
    settings: GGUFSettings = GGUFSettings(),
    *,
    out: str | Path,
    predictor: LatencyPredictor | str | Path | None = None,
    bench: BenchSettings | None = BenchSettings(),
    callback: Callback = None,
) -> Artifact:
    """Export `subnet` of `supernet` as a verified GGUF artifact in the new directory `out`.

    Arguments as `exporter.export` takes them: `predictor`'s prediction for `subnet` is recorded,
    `bench` says how llama.cpp measures the artifact on this CPU (`None`: not measured). `VerificationError`
    when llama.cpp does not pass the gate; then nothing is left behind. Returns the artifact
    (`.directory`, `.manifest`).
    """
    from ..model.supernet import load_supernet

    out = Path(out)
    check_out_dir(out)
    require_llama_cpp()
    space = load_space(space)
    subnet = space.resolve(subnet)
    predicted = predicted_block(predictor, space, subnet, bench)
    if bench is not None:  # refused now, not once the file is written and verified
        artifact_backend_class(gguf=True).check_shapes(bench.shapes_for(predicted or {}))
    steps = ("load", "write", "verify", "artifact", *(("bench",) if bench is not None else ()))
    with new_directory(out) as artifact_dir:
        report(callback, "export", 0, len(steps), "step", status="load")
        supernet = load_supernet(supernet, space)
        report(callback, "export", 1, len(steps), "step", status="write")
        written = write_gguf(supernet, subnet, artifact_dir / GGUF_NAME, settings.precision)
        report(callback, "export", 2, len(steps), "step", status="verify")
        verification = _verify(supernet, subnet, artifact_dir / GGUF_NAME, settings)
        report(callback, "export", 3, len(steps), "step", status="artifact")
        manifest = _manifest(supernet, space, subnet, settings, written, verification, predicted, artifact_dir)
        if bench is not None:
            report(callback, "export", 4, len(steps), "step", status="bench")
            manifest["measured"] = bench_decoder(artifact_dir, manifest, bench)
        manifest = write_manifest(artifact_dir, manifest, kind=GGUF_KIND)
        report(callback, "export", len(steps), len(steps), "step", status="done")
    return Artifact(out, manifest)


def _verify(supernet: SuperNetwork, subnet: SubnetConfig, path: Path, settings: GGUFSettings) -> dict[str, Any]:
    model = supernet.extract(subnet, copy=False)
    vocab_size = model.config.vocab_size
    tokens, source = eval_tokens(supernet.source, settings.data, settings.max_eval_tokens, vocab_size)
    figures = verify_gguf(model, path, tokens, read_texts(source), supernet.source, precision=settings.precision,
                          threads=settings.threads, max_ppl_increase_pct=settings.max_ppl_increase_pct)  # fmt: skip
    return {"data": source, **figures}


def _manifest(supernet: SuperNetwork, space: SearchSpace, subnet: SubnetConfig, settings: GGUFSettings,
              written: dict[str, Any], verification: dict[str, Any], predicted: dict[str, Any] | None,
              artifact_dir: Path) -> dict[str, Any]:  # fmt: skip
    import llama_cpp

    stats = subnet_stats(supernet.shape, subnet)
    return {
        "kind": GGUF_KIND,  # what `bench` reads before the manifest is sealed
        "subnet": subnet.to_dict(),
        "subnet_id": subnet.id,
        "space_id": space.id,
        "super_network": {"path": str(supernet.source), "weights_sha256": supernet.weights_sha256()},
        "precision": settings.precision,
        "device": "cpu",
        "runtime": {"name": "llama.cpp", "llama_cpp_python": llama_cpp.__version__},
        "size": {"params": stats.params, "fp16_bytes": stats.fp16_bytes, "fp16_gib": stats.fp16_gib,
                 "gguf_bytes": (artifact_dir / GGUF_NAME).stat().st_size},  # fmt: skip
        "gguf": written,
        "tokens": {k: supernet.config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
        "verification": verification,
        "predicted": predicted,
        "measured": None,
    }
