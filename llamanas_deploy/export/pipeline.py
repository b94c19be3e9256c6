"""`llamanas export` end to end: extract -> export fp32 -> verify -> quantize -> verify -> artifact.

Everything is built in a temporary directory next to `--out` and moved into place only once
every check passed, so a failed export leaves no artifact behind and never touches an
existing one (a non-empty `--out` is refused up front).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..subnet_config import SubnetConfig
from ..onnx_model.quantize import PRECISIONS, QuantSettings

EVAL_SEQ_LEN = 128
RANDOM_TOKENS_SEED = 0


@dataclass(frozen=True)
class ExportRequest:
    model: str
    space: str
    subnet: SubnetConfig
    precision: str
    device: str
    out: Path
    predictor: Path | None = None
    data: str | None = None
    max_eval_tokens: int = 4096
    block_size: int | None = None
    accuracy_level: int | None = None
    max_ppl_increase_pct: float | None = None
    bench: bool = True
    bench_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


def check_out_dir(out: Path) -> None:
    """`--out` must not exist, or be an empty directory: nothing already saved is overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"--out {out}: already exists and is not an empty directory; choose a new directory")


def export_artifact(request: ExportRequest) -> dict[str, Any]:
    """Run the whole export; returns the manifest of the artifact now at `request.out`."""
    from tqdm import tqdm

    from ..model.supernet import SuperNetwork
    from ..runtime import check_device
    from ..space import load_space
    from ..onnx_model.artifact import write_manifest
    from .bench import bench_decoder

    # every input is checked before anything slow starts
    if request.precision not in PRECISIONS:
        raise BadInputError(f"--precision {request.precision}: expected one of {list(PRECISIONS)}")
    check_out_dir(request.out)
    provider = check_device(request.device)
    space = load_space(request.space)
    subnet = space.validate(request.subnet, "--subnet")
    predictor = _load_predictor(request.predictor, space) if request.predictor else None
    settings = _quant_settings(request)
    steps = ["load", "export", "verify", *(["quantize", "verify quantized"] if settings else []), "artifact"]
    steps += ["bench"] if request.bench else []
    request.out.parent.mkdir(parents=True, exist_ok=True)
    with (
        tqdm(steps, desc="export", disable=not request.progress, leave=False) as bar,
        tempfile.TemporaryDirectory(prefix=f".{request.out.name}.", dir=request.out.parent) as tmp,
    ):
        stage = _Stages(bar)
        stage("load")
        supernet = SuperNetwork.load(request.model)
        supernet.check_space(space)
        built = _build(request, supernet, subnet, Path(tmp), settings, stage)
        manifest = _manifest(request, space, supernet, subnet, provider, built)
        if predictor is not None:
            manifest["predicted"] = _predicted(predictor, request.predictor, subnet)
        if request.bench:
            stage("bench")
            manifest["measured"] = bench_decoder(built.artifact_dir, manifest, **request.bench_options)
        manifest = write_manifest(built.artifact_dir, manifest)
        _move_into_place(built.artifact_dir, request.out)
    return manifest


class _Stages:
    """Advances the progress bar; each call names the stage that starts now."""

    def __init__(self, bar):
        self.bar, self.started = bar, False

    def __call__(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(name)


@dataclass
class _Built:
    artifact_dir: Path
    onnx_config: Any
    model_config: dict[str, Any]
    quant: QuantSettings
    verification: dict[str, Any]
    external_data: bool
    tokenizer_files: list[str]


def _build(request: ExportRequest, supernet, subnet: SubnetConfig, tmp: Path, settings, stage) -> _Built:
    from ..runtime import OrtDecoder
    from ..onnx_model.artifact import GENAI_CONFIG, copy_tokenizer, genai_config, write_json
    from ..onnx_model.config import onnx_config_for
    from ..onnx_model.exporter import ONNX_NAME, export_onnx
    from ..onnx_model.quantize import quantize
    from .verify import verify_fp32, verify_quantized

    stage("export")
    model = supernet.extract(subnet)
    model_config = model.config.to_dict() | {"intermediate_sizes": list(subnet.intermediate_sizes)}
    onnx_config = onnx_config_for(model_config, f"sub-network {subnet.id}")
    fp32_dir, artifact_dir = tmp / "fp32", tmp / "artifact"
    fp32_dir.mkdir()
    artifact_dir.mkdir()
    fp32_path = export_onnx(model, onnx_config, fp32_dir)
    external = (fp32_dir / f"{ONNX_NAME}.data").exists()
    tokens, data_source = eval_tokens(supernet.source, request.data, request.max_eval_tokens, onnx_config.vocab_size)
    stage("verify")
    fp32 = OrtDecoder(fp32_path, request.device)
    verification = {"data": data_source, "fp32_vs_torch": verify_fp32(model, fp32, onnx_config, tokens)}
    del model  # the torch copy is not needed any more: free it before quantizing
    if settings is None:
        quant = QuantSettings("fp32")
        for path in fp32_dir.iterdir():
            shutil.move(str(path), artifact_dir / path.name)
    else:
        stage("quantize")
        quant = quantize(fp32_path, artifact_dir / ONNX_NAME, settings, external)
        stage("verify quantized")
        quantized = OrtDecoder(artifact_dir / ONNX_NAME, request.device)
        verification["quantized_vs_fp32"] = verify_quantized(
            fp32, quantized, tokens, EVAL_SEQ_LEN, request.max_ppl_increase_pct
        )
    stage("artifact")
    provider = fp32.session.get_providers()[0]
    write_json(artifact_dir / GENAI_CONFIG, genai_config(onnx_config, model_config, provider, ONNX_NAME))
    tokenizer_files = copy_tokenizer(supernet.source, artifact_dir)
    return _Built(artifact_dir, onnx_config, model_config, quant, verification, external, tokenizer_files)


def _quant_settings(request: ExportRequest) -> QuantSettings | None:
    from ..onnx_model.quantize import int4_settings, int8_settings

    if request.precision == "int8":
        from ..profile.fingerprint import current_fingerprint

        return int8_settings(current_fingerprint()["device"]["isa_flags"])
    if request.precision == "int4":
        return int4_settings(request.device, request.block_size, request.accuracy_level)
    return None


def eval_tokens(model_dir: Path, data: str | None, max_tokens: int, vocab_size: int) -> tuple[list[int], str]:
    """Held-out token ids for the accuracy checks, and where they came from.

    `--data` (any source `data.read_texts` reads) > the model directory's `heldout.txt` >
    a deterministic sample of random token ids (enough to check agreement, not accuracy).
    """
    from ..data import load_tokenizer, read_texts, tokenize

    heldout = model_dir / "heldout.txt"
    has_tokenizer = (model_dir / "tokenizer.json").is_file()
    if data is not None and not has_tokenizer:
        raise BadInputError(f"--data {data}: the model directory {model_dir} has no tokenizer.json to tokenize it with")
    if has_tokenizer and (data is not None or heldout.is_file()):
        source = data if data is not None else str(heldout)
        ids = tokenize(read_texts(source), load_tokenizer(model_dir), eos_id=None)[:max_tokens]
        if len(ids) < EVAL_SEQ_LEN:
            raise BadInputError(f"{source}: {len(ids)} tokens, the checks need at least {EVAL_SEQ_LEN}")
        return ids, source
    import numpy as np

    ids = np.random.default_rng(RANDOM_TOKENS_SEED).integers(0, vocab_size, max_tokens).tolist()
    return ids, f"random token ids (seed {RANDOM_TOKENS_SEED}; no held-out text in {model_dir})"


def _manifest(request, space, supernet, subnet: SubnetConfig, provider: str, built: _Built) -> dict[str, Any]:
    from ..analytics import subnet_stats

    stats = subnet_stats(supernet.shape, subnet)
    config = built.onnx_config
    onnx_bytes = sum(p.stat().st_size for p in built.artifact_dir.glob("model.onnx*"))
    return {
        "subnet": subnet.to_dict(),
        "subnet_id": subnet.id,
        "space_id": space.id,
        "super_network": {"path": str(supernet.source), "weights_sha256": supernet.weights_sha256()},
        "precision": request.precision,
        "quantization": built.quant.to_dict(),
        "device": request.device,
        "execution_provider": provider,
        "size": {"params": stats.params, "fp16_bytes": stats.fp16_bytes, "fp16_gib": stats.fp16_gib, "onnx_bytes": onnx_bytes},
        "onnx": {
            "file": "model.onnx",
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


def _load_predictor(path: Path, space):
    from ..predict.estimator import LatencyPredictor

    predictor = LatencyPredictor.load(path)
    predictor.check_space(space)
    return predictor


def _predicted(predictor, path: Path, subnet: SubnetConfig) -> dict[str, Any]:
    meta = predictor.metadata_
    keys = (
        "metric", "unit", "statistic", "target", "fingerprint_id", "backend", "precision", "device", "threads", "clock", "shapes"
    )  # fmt: skip
    return {"predictor": str(path), "value": float(predictor.predict([subnet])[0]), **{k: meta.get(k) for k in keys}}


def _move_into_place(built: Path, out: Path) -> None:
    """Atomic rename of the finished artifact to `--out` (an empty `--out` is replaced)."""
    check_out_dir(out)  # nothing appeared there while we were working
    if out.is_dir():
        out.rmdir()
    os.replace(built, out)
