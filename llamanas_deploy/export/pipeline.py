"""Export end to end: extract -> export fp32 / fp16 -> verify -> quantize -> verify -> artifact (-> bench).

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
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..concepts import DEVICES, EXPORT_PRECISIONS, check_choice
from ..errors import BadInputError
from ..onnx_model.quantize import QuantSettings, check_blocks
from ..progress import Callback, report
from ..subnet_config import SubnetConfig
from .measure import BenchSettings
from .verify import DEFAULT_MAX_PPL_INCREASE_PCT

if TYPE_CHECKING:
    from ..model.supernet import SuperNetwork
    from ..predict.estimator import LatencyPredictor
    from ..space import SearchSpace

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
        from ..onnx_model.graphs import DEFAULT_PRECISIONS, check_precision

        check_choice(self.device, DEVICES, "device")
        if self.precision is None:
            object.__setattr__(self, "precision", DEFAULT_PRECISIONS[self.device])
        check_choice(self.precision, EXPORT_PRECISIONS, "precision")
        check_precision(self.device, self.precision)
        tokens = self.max_eval_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < EVAL_SEQ_LEN:
            raise BadInputError(f"must be an integer >= {EVAL_SEQ_LEN}, got {tokens!r}", param="max_eval_tokens")
        check_blocks(self.block_size, self.accuracy_level)
        limit = self.max_ppl_increase_pct
        if limit is None and self.precision in DEFAULT_MAX_PPL_INCREASE_PCT:
            object.__setattr__(self, "max_ppl_increase_pct", DEFAULT_MAX_PPL_INCREASE_PCT[self.precision])
        elif limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit)):
            raise BadInputError(f"must be a finite number (percent), got {limit!r}", param="max_ppl_increase_pct")


@dataclass(frozen=True)
class ExportResult:
    """The artifact now at `directory`, and its manifest (as written in `manifest.json`)."""

    directory: Path
    manifest: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """What `llamanas export --json` prints."""
        return {"artifact": str(self.directory), **self.manifest}


def export(
    model: SuperNetwork | str | Path,
    space: SearchSpace | str | Path,
    subnet: SubnetConfig | str,
    out: str | Path,
    settings: ExportSettings = ExportSettings(),
    *,
    predictor: LatencyPredictor | str | Path | None = None,
    bench: BenchSettings | None = BenchSettings(),
    callback: Callback = None,
) -> ExportResult:
    """Export `subnet` of `model` as a verified ONNX Runtime artifact in the new directory `out`.

    `model`: a loaded `SuperNetwork` (used as is) or its checkpoint directory / built-in name.
    `space`: a `SearchSpace` or its name / file; `subnet` a `SubnetConfig` or anything
    `SearchSpace.resolve` reads. `predictor`: a `LatencyPredictor` or its file, whose prediction
    for `subnet` is recorded. `bench`: how to measure the artifact on this device, `None` for no
    measurement. Every input is checked before anything slow starts.
    """
    from ..jsonfiles import check_out_dir, new_directory
    from ..model.supernet import SuperNetwork
    from ..onnx_model.artifact import write_manifest
    from ..runtime import check_device
    from ..space import load_space
    from .measure import bench_decoder

    out = Path(out)
    check_out_dir(out)
    provider = check_device(settings.device)
    space = load_space(space) if isinstance(space, (str, Path)) else space
    subnet = space.resolve(subnet) if isinstance(subnet, str) else space.validate(subnet)
    predictor, predictor_name = _load_predictor(predictor, space) if predictor is not None else (None, None)
    quantized = settings.precision in QUANTIZED
    steps = ["load", "export", "verify", *(["quantize", "verify quantized"] if quantized else []), "artifact"]
    stage = _Stages(callback, steps + (["bench"] if bench is not None else []))
    with new_directory(out) as artifact_dir:
        stage("load")
        supernet = model if isinstance(model, SuperNetwork) else SuperNetwork.load(model)
        supernet.check_space(space)
        built = _build(supernet, subnet, settings, artifact_dir, stage)
        manifest = _manifest(settings, space, supernet, subnet, provider, built)
        if predictor is not None:
            manifest["predicted"] = _predicted(predictor, predictor_name, subnet)
        if bench is not None:
            stage("bench")
            manifest["measured"] = bench_decoder(artifact_dir, manifest, bench)
        manifest = write_manifest(artifact_dir, manifest)
        stage.finish()
    return ExportResult(out, manifest)


class _Stages:
    """Reports the export's progress: each call names the step that starts now."""

    def __init__(self, callback: Callback, steps: list[str]):
        self.callback, self.steps = callback, steps

    def __call__(self, name: str) -> None:
        report(self.callback, "export", self.steps.index(name), len(self.steps), "step", status=name)

    def finish(self) -> None:
        report(self.callback, "export", len(self.steps), len(self.steps), "step", status="done")


@dataclass
class _Built:
    artifact_dir: Path
    onnx_config: Any
    graph: str
    dtype: str
    model_config: dict[str, Any]
    quant: QuantSettings
    verification: dict[str, Any]
    external_data: bool
    tokenizer_files: list[str]


def _build(supernet, subnet: SubnetConfig, settings: ExportSettings, artifact_dir: Path,
           stage: Callable[[str], None]) -> _Built:  # fmt: skip
    """Export, verify and quantize into `artifact_dir` (empty; its parent is scratch space)."""
    from ..jsonfiles import write_json
    from ..onnx_model.artifact import GENAI_CONFIG, copy_tokenizer, genai_config
    from ..onnx_model.config import onnx_config_for
    from ..onnx_model.exporter import ONNX_NAME
    from ..onnx_model.graphs import export_graph, graph_dtype, graph_for
    from ..onnx_model.quantize import quantize
    from ..runtime import PROVIDERS, OrtDecoder
    from .verify import verify_fp32, verify_quantized

    stage("export")
    model = supernet.extract(subnet)
    model_config = model.config.to_dict() | {"intermediate_sizes": list(subnet.intermediate_sizes)}
    onnx_config = onnx_config_for(model_config, f"sub-network {subnet.id}")
    graph, dtype = graph_for(settings.device, onnx_config), graph_dtype(settings.device)
    base = BASE_PRECISIONS[dtype]  # the unquantized graph: fp32, or fp16 on CUDA
    quant = _quant_settings(settings)
    base_dir = artifact_dir.parent / base
    base_dir.mkdir()
    base_path = export_graph(model, onnx_config, base_dir, graph, settings.precision, dtype)
    external = (base_dir / f"{ONNX_NAME}.data").exists()
    tokens, data_source = eval_tokens(supernet.source, settings.data, settings.max_eval_tokens, onnx_config.vocab_size)
    stage("verify")
    unquantized = OrtDecoder(base_path, settings.device)
    verification = {"data": data_source, f"{base}_vs_torch": verify_fp32(model, unquantized, onnx_config, tokens)}
    del model  # the torch copy is not needed any more: free it before quantizing
    if quant is None:
        quant = QuantSettings(base)
        for path in base_dir.iterdir():
            shutil.move(str(path), artifact_dir / path.name)
    else:
        stage("quantize")
        quant = quantize(base_path, artifact_dir / ONNX_NAME, quant, external, graph)
        stage("verify quantized")
        quantized = OrtDecoder(artifact_dir / ONNX_NAME, settings.device)
        verification[f"quantized_vs_{base}"] = verify_quantized(
            unquantized, quantized, tokens, EVAL_SEQ_LEN, settings.max_ppl_increase_pct, base
        )
    stage("artifact")
    genai = genai_config(onnx_config, model_config, PROVIDERS[settings.device], ONNX_NAME, graph)
    write_json(artifact_dir / GENAI_CONFIG, genai, sort_keys=True)
    tokenizer_files = copy_tokenizer(supernet.source, artifact_dir)
    return _Built(artifact_dir, onnx_config, graph, dtype, model_config, quant, verification, external, tokenizer_files)


def _quant_settings(settings: ExportSettings) -> QuantSettings | None:
    from ..onnx_model.quantize import settings_for

    return settings_for(settings.precision, settings.device, settings.block_size, settings.accuracy_level)


def eval_tokens(model_dir: Path, data: str | None, max_tokens: int, vocab_size: int) -> tuple[list[int], str]:
    """Held-out token ids for the accuracy checks, and where they came from.

    `data` (any source `data.read_texts` reads) > the model directory's `heldout.txt` > the toolkit's
    shipped held-out text, tokenized with the model's tokenizer; a model without a tokenizer (random
    weights, as the profiler's) gets a deterministic sample of random token ids (enough to check
    agreement, not accuracy).
    """
    from ..data import load_tokenizer, read_texts, tokenize
    from ..evaluate import heldout_file

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


def _manifest(settings: ExportSettings, space, supernet, subnet: SubnetConfig, provider: str, built: _Built) -> dict[str, Any]:
    from ..analytics import subnet_stats

    stats = subnet_stats(supernet.shape, subnet)
    config = built.onnx_config
    onnx_bytes = sum(p.stat().st_size for p in built.artifact_dir.glob("model.onnx*"))
    return {
        "subnet": subnet.to_dict(),
        "subnet_id": subnet.id,
        "space_id": space.id,
        "super_network": {"path": str(supernet.source), "weights_sha256": supernet.weights_sha256()},
        "precision": settings.precision,
        "quantization": built.quant.to_dict(),
        "device": settings.device,
        "execution_provider": provider,
        "size": {"params": stats.params, "fp16_bytes": stats.fp16_bytes, "fp16_gib": stats.fp16_gib, "onnx_bytes": onnx_bytes},
        "onnx": {
            "file": "model.onnx",
            "graph": built.graph,
            "dtype": built.dtype,
            "external_data": built.external_data,
            "opset": config.opset,
            "inputs": {k: {str(a): n for a, n in v.items()} for k, v in config.inputs.items()},
            "outputs": {k: {str(a): n for a, n in v.items()} for k, v in config.outputs.items()},
        },
        "tokens": {k: built.model_config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
        "tokenizer_files": built.tokenizer_files,
        "verification": built.verification,
        "predicted": None,
        "measured": None,
    }


def _load_predictor(predictor: LatencyPredictor | str | Path, space: SearchSpace) -> tuple[LatencyPredictor, str]:
    """The predictor (loaded when given as a path) checked against `space`, and how the manifest names it."""
    from ..predict.estimator import LatencyPredictor

    if isinstance(predictor, (str, Path)):
        name, predictor = str(predictor), LatencyPredictor.load(predictor)
    else:
        name = predictor.source
    predictor.check_space(space)
    return predictor, name


def _predicted(predictor, name: str, subnet: SubnetConfig) -> dict[str, Any]:
    meta = predictor.metadata_
    keys = (
        "metric", "unit", "statistic", "target", "fingerprint_id", "backend", "precision", "device", "threads", "clock", "shapes"
    )  # fmt: skip
    return {"predictor": name, "value": float(predictor.predict([subnet])[0]), **{k: meta.get(k) for k in keys}}
