"""Export end to end: extract -> export fp32 / fp16 -> quantize -> verify -> verify quantized -> artifact (-> bench).

Memory stays near one copy of the weights: the sub-network is a view of the super-network's
tensors (`SuperNetwork.extract(copy=False)`), every graph streams its weights to disk as they are
made (the fused graph quantized as it is built), the torch outputs the checks need are taken
before the super-network is freed (when `export` loaded it), and one ONNX Runtime session is open
at a time (the unquantized graph's figures are taken before the quantized session opens).

The device picks the graph and its dtype (`onnx_model.graphs`): on the CPU a float32 graph
(fp32, int8, int4); on CUDA a float16 graph (fp16, or int4 MatMulNBits over it), verified on
the GPU against the float32 torch model with fp16 tolerances, and `genai_config.json` naming
the CUDA provider.

Everything is built in a temporary directory next to `out` (`jsonfiles.new_directory`)
and moved into place only once every check passed, so a failed export leaves no artifact
behind and never touches an existing one (a non-empty `out` is refused up front).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..analytics import subnet_stats
from ..concepts import DEVICES, EXPORT_PRECISIONS, check_choice
from ..data import load_tokenizer, read_texts, tokenize
from ..errors import BadInputError
from ..evaluate import heldout_file
from ..jsonfiles import check_out_dir, new_directory, write_json
from ..onnx_model.artifact import GENAI_CONFIG, copy_tokenizer, genai_config, write_manifest
from ..onnx_model.config import ONNX_NAME, onnx_config_for
from ..onnx_model.graphs import (
    DEFAULT_PRECISIONS, check_precision, export_graph, export_quantized, graph_dtype, graph_for
)  # fmt: skip
from ..onnx_model.quantize import QuantSettings, check_blocks, settings_for
from ..progress import Callback, report
from ..runtime import PROVIDERS, Artifact, OrtDecoder
from ..space import SearchSpace, load_space
from ..subnet_config import SubnetConfig
from .measure import BenchSettings, bench_decoder
from .prediction import predicted_block
from .verify import DEFAULT_MAX_PPL_INCREASE_PCT, quality_reference, torch_reference, verify_fp32, verify_quantized

if TYPE_CHECKING:
    from ..model.supernet import SuperNetwork
    from ..predict.estimator import LatencyPredictor
    from ..search.results import FrontMember

EVAL_SEQ_LEN = 128
QUANTIZED = ("int8", "int4")
BASE_PRECISIONS = {"float32": "fp32", "float16": "fp16"}  # the unquantized graph's precision, by its dtype
RANDOM_TOKENS_SEED = 0


@dataclass(frozen=True)
class ExportSettings:
    """What to export and how to check it.

    `data`: held-out text for the accuracy checks (any source `data.read_texts` reads; default:
    the model directory's `heldout.txt`, else random token ids). `block_size` and
    `accuracy_level` tune the quantization (default: the precision's on the device). `max_ppl_increase_pct`:
    a quantized export whose perplexity rises by more than this (in %) fails verification (None: the
    precision's default, `verify.DEFAULT_MAX_PPL_INCREASE_PCT`). `precision`:
    one the device deploys (`onnx_model.graphs.DEPLOYED_PRECISIONS`); None: the device's
    default (fp32 on the CPU, fp16 on CUDA).
    """

    precision: str | None = None
    device: str = "cpu"
    data: str | None = None
    max_eval_tokens: int = 4096
    block_size: int | None = None
    accuracy_level: int | None = None
    max_ppl_increase_pct: float | None = None

    def __post_init__(self) -> None:
        check_choice(self.device, DEVICES, "device")
        if self.precision is None:
            object.__setattr__(self, "precision", DEFAULT_PRECISIONS[self.device])
        check_choice(self.precision, EXPORT_PRECISIONS, "precision")
        check_precision(self.device, self.precision)
        check_eval_tokens(self.max_eval_tokens)
        check_blocks(self.block_size, self.accuracy_level)
        limit = checked_ppl_limit(self.max_ppl_increase_pct, DEFAULT_MAX_PPL_INCREASE_PCT.get(self.precision))
        object.__setattr__(self, "max_ppl_increase_pct", limit)


def check_eval_tokens(tokens: Any) -> None:
    """`max_eval_tokens` of an export's settings: an integer of at least one evaluation window."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < EVAL_SEQ_LEN:
        raise BadInputError(f"must be an integer >= {EVAL_SEQ_LEN}, got {tokens!r}", param="max_eval_tokens")


def checked_ppl_limit(limit: Any, default: float | None) -> float | None:
    """`max_ppl_increase_pct` of an export's settings: a finite percentage >= 0, else the precision's `default`."""
    if limit is None:
        return default
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit < 0:
        raise BadInputError(f"must be a finite number >= 0 (percent), got {limit!r}", param="max_ppl_increase_pct")
    return limit


def export(
    supernet: SuperNetwork | str | Path,
    space: SearchSpace | str | Path,
    subnet: SubnetConfig | FrontMember | str,
    settings: ExportSettings = ExportSettings(),
    *,
    out: str | Path,
    predictor: LatencyPredictor | str | Path | None = None,
    bench: BenchSettings | None = BenchSettings(),
    callback: Callback = None,
) -> Artifact:
    """Export `subnet` of `supernet` as a verified ONNX Runtime artifact in the new directory `out`.

    `supernet`: a loaded `SuperNetwork` (used as is) or its checkpoint directory / built-in name.
    `space`: a `SearchSpace` or its name / file; `subnet` a `SubnetConfig` or anything
    `SearchSpace.resolve` reads. `predictor`: a `LatencyPredictor` or its file, whose prediction
    for `subnet` is recorded. `bench`: how to measure the artifact on this device, `None` for no
    measurement. Every input is checked before anything slow starts. Returns the artifact, as
    `runtime.open_artifact` opens it.
    """
    from ..model.supernet import load_supernet
    from ..runtime import check_device  # looked up when called: tests patch it

    out = Path(out)
    check_out_dir(out)
    provider = check_device(settings.device)
    space = load_space(space)
    subnet = space.resolve(subnet)
    predicted = predicted_block(predictor, space, subnet, bench)
    quantized = settings.precision in QUANTIZED
    steps = ["load", "export", *(["quantize"] if quantized else []), "verify", *(["verify quantized"] if quantized else []),
             "artifact"]  # fmt: skip
    stage = _Stages(callback, steps + (["bench"] if bench is not None else []))
    with new_directory(out) as artifact_dir:
        stage("load")
        supernet = load_supernet(supernet, space)
        origin = _Origin(supernet.source, supernet.weights_sha256(), subnet_stats(supernet.shape, subnet))
        graphs = _write_graphs(supernet, subnet, settings, artifact_dir, stage)
        del supernet  # every weight is in the graphs now: freed here, unless the caller holds it
        verification = _verify(graphs, settings, artifact_dir, stage)
        stage("artifact")
        genai = genai_config(graphs.onnx_config, graphs.model_config, PROVIDERS[settings.device], ONNX_NAME, graphs.graph)
        write_json(artifact_dir / GENAI_CONFIG, genai, sort_keys=True)
        tokenizer_files = copy_tokenizer(origin.source, artifact_dir)
        manifest = _manifest(settings, space, origin, subnet, provider, graphs, verification, tokenizer_files, artifact_dir)
        if predicted is not None:
            manifest["predicted"] = predicted
        if bench is not None:
            stage("bench")
            manifest["measured"] = bench_decoder(artifact_dir, manifest, bench)
        manifest = write_manifest(artifact_dir, manifest)
        stage.finish()
    return Artifact(out, manifest)


class _Stages:
    """Reports the export's progress: each call names the step that starts now."""

    def __init__(self, callback: Callback, steps: list[str]):
        self.callback, self.steps = callback, steps

    def __call__(self, name: str) -> None:
        report(self.callback, "export", self.steps.index(name), len(self.steps), "step", status=name)

    def finish(self) -> None:
        report(self.callback, "export", len(self.steps), len(self.steps), "step", status="done")


@dataclass(frozen=True)
class _Origin:
    """What the manifest says about the super-network, taken before its weights are freed."""

    source: Path
    weights_sha256: str
    stats: Any  # analytics.SubnetStats


@dataclass(frozen=True)
class _Graphs:
    """The unquantized graph (`base_path`: the artifact's own when nothing is quantized) and, when
    quantized, the artifact's graph beside it; with what the checks need from the torch model."""

    base_path: Path
    quant: QuantSettings
    onnx_config: Any
    model_config: dict[str, Any]
    graph: str
    dtype: str
    tokens: list[int]
    data_source: str
    torch_reference: Any  # verify.TorchReference


def _write_graphs(supernet, subnet: SubnetConfig, settings: ExportSettings, artifact_dir: Path,
                  stage: Callable[[str], None]) -> _Graphs:  # fmt: skip
    """Write the graphs from views of the super-network's weights (no copy of them is made), and
    take the torch outputs the checks compare with; `artifact_dir`'s parent is scratch space."""
    stage("export")
    model = supernet.extract(subnet, copy=False)
    model_config = model.config.to_dict() | {"intermediate_sizes": list(subnet.intermediate_sizes)}
    onnx_config = onnx_config_for(model_config, f"sub-network {subnet.id}")
    graph, dtype = graph_for(settings.device, onnx_config), graph_dtype(settings.device)
    base = BASE_PRECISIONS[dtype]  # the unquantized graph: fp32, or fp16 on CUDA
    quant = _quant_settings(settings)
    base_dir = artifact_dir if quant is None else artifact_dir.parent / base
    base_dir.mkdir(exist_ok=True)
    base_path = export_graph(model, onnx_config, base_dir, graph, settings.precision, dtype)
    if quant is None:
        quant = QuantSettings(base)
    else:
        stage("quantize")
        quant = export_quantized(model, onnx_config, artifact_dir, graph, quant, dtype, base=base_path)
    tokens, data_source = eval_tokens(supernet.source, settings.data, settings.max_eval_tokens, onnx_config.vocab_size)
    reference = torch_reference(model, onnx_config, tokens)
    return _Graphs(base_path, quant, onnx_config, model_config, graph, dtype, tokens, data_source, reference)


def _verify(graphs: _Graphs, settings: ExportSettings, artifact_dir: Path, stage: Callable[[str], None]) -> dict[str, Any]:
    """The unquantized graph against torch, then the quantized one against it; one session open at a time."""

    stage("verify")
    base = BASE_PRECISIONS[graphs.dtype]
    unquantized = OrtDecoder(graphs.base_path, settings.device)
    verification = {"data": graphs.data_source, f"{base}_vs_torch": verify_fp32(graphs.torch_reference, unquantized, graphs.onnx_config)}
    if settings.precision not in QUANTIZED:
        return verification
    reference = quality_reference(unquantized, graphs.tokens, EVAL_SEQ_LEN)
    del unquantized
    stage("verify quantized")
    quantized = OrtDecoder(artifact_dir / ONNX_NAME, settings.device)
    verification[f"quantized_vs_{base}"] = verify_quantized(
        reference, quantized, graphs.tokens, settings.max_ppl_increase_pct, base
    )
    return verification


def _quant_settings(settings: ExportSettings) -> QuantSettings | None:
    return settings_for(settings.precision, settings.device, settings.block_size, settings.accuracy_level)


def eval_tokens(model_dir: Path, data: str | None, max_tokens: int, vocab_size: int) -> tuple[list[int], str]:
    """Held-out token ids for the accuracy checks, and where they came from.

    `data` (any source `data.read_texts` reads) > the model directory's `heldout.txt` > the toolkit's
    shipped held-out text, tokenized with the model's tokenizer; a model without a tokenizer (random
    weights, as the profiler's) gets a deterministic sample of random token ids (enough to check
    agreement, not accuracy).
    """
    heldout = heldout_file(model_dir)
    has_tokenizer = (model_dir / "tokenizer.json").is_file()
    if data is not None and not has_tokenizer:
        raise BadInputError(
            f"{data}: the model directory {model_dir} has no tokenizer.json to tokenize it with", param="data"
        )
    if has_tokenizer and (data is not None or heldout.is_file()):
        source = data if data is not None else str(heldout)
        ids = tokenize(read_texts(source), load_tokenizer(model_dir), eos_id=None)[:max_tokens]
        if len(ids) < EVAL_SEQ_LEN:
            raise BadInputError(f"{source}: {len(ids)} tokens, the checks need at least {EVAL_SEQ_LEN}")
        return ids, source
    import numpy as np

    ids = np.random.default_rng(RANDOM_TOKENS_SEED).integers(0, vocab_size, max_tokens).tolist()
    return ids, f"random token ids (seed {RANDOM_TOKENS_SEED}; no tokenizer.json in {model_dir})"


def _manifest(settings: ExportSettings, space, origin: _Origin, subnet: SubnetConfig, provider: str, graphs: _Graphs,
              verification: dict[str, Any], tokenizer_files: list[str], artifact_dir: Path) -> dict[str, Any]:  # fmt: skip
    stats, config = origin.stats, graphs.onnx_config
    onnx_files = sorted(artifact_dir.glob("model.onnx*"))
    return {
        "subnet": subnet.to_dict(),
        "subnet_id": subnet.id,
        "space_id": space.id,
        "super_network": {"path": str(origin.source), "weights_sha256": origin.weights_sha256},
        "precision": settings.precision,
        "quantization": graphs.quant.to_dict(),
        "device": settings.device,
        "execution_provider": provider,
        "size": {"params": stats.params, "fp16_bytes": stats.fp16_bytes, "fp16_gib": stats.fp16_gib,
                 "onnx_bytes": sum(p.stat().st_size for p in onnx_files)},  # fmt: skip
        "onnx": {
            "file": "model.onnx",
            "graph": graphs.graph,
            "dtype": graphs.dtype,
            "external_data": any(p.name.endswith(".data") for p in onnx_files),
            "opset": config.opset,
            "inputs": {k: {str(a): n for a, n in v.items()} for k, v in config.inputs.items()},
            "outputs": {k: {str(a): n for a, n in v.items()} for k, v in config.outputs.items()},
        },
        "tokens": {k: graphs.model_config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
        "tokenizer_files": tokenizer_files,
        "verification": verification,
        "predicted": None,
        "measured": None,
    }
