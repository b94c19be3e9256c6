"""The device fingerprint: what hardware and software a profile was measured on.

`current_fingerprint()` describes this machine. Its `fingerprint_id` hashes only the
stable identity (`IDENTITY_KEYS`: CPU model, cores, ISA flags, total memory, GPUs, OS,
Python / torch / transformers / onnxruntime versions), never free memory or thread
settings, so the same machine always gets the same id and a profile taken elsewhere is
recognized as foreign. llama-cpp-python's version (the `llamacpp` backend's runtime) is described
too, read from the installed package's metadata (llama_cpp is not imported), but not hashed: the id
predates it, and hashing it would make every profile and predictor already taken foreign.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# ISA features that change how fast matrix multiplies run (names as in /proc/cpuinfo)
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "sve", "sve2", "i8mm", "bf16",
)  # fmt: skip
IDENTITY_KEYS = (
    "cpu_model", "cpu_physical_cores", "cpu_logical_cores", "isa_flags", "memory_gib", "gpus",
    "os", "machine", "python", "torch", "transformers", "onnxruntime",
)  # fmt: skip
PACKAGES = ("torch", "transformers", "onnxruntime", "llama_cpp_python")  # distribution names; None when not installed


def current_fingerprint() -> dict[str, Any]:
    """`{"fingerprint_id": ..., "device": {...}}` of this machine."""
    device = device_info()
    return {"fingerprint_id": fingerprint_id(device), "device": device}


def fingerprint_id(device: dict[str, Any]) -> str:
    """sha256[:16] of the identity part of a device description."""
    identity = {key: device.get(key) for key in IDENTITY_KEYS}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def device_info() -> dict[str, Any]:
    cpu = _cpu_info()
    return {
        **cpu,
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "gpu_memory_bandwidth": [memory_bandwidth(i) for i in range(_cuda_device_count())],
        "os": platform.system(),
        "os_release": platform.release(),
        "machine": platform.machine(),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        **{name: _version(name) for name in PACKAGES},
        "threads": _thread_settings(),
    }


def describe(device: dict[str, Any]) -> str:
    """One line a person reads: 'Intel Xeon (2 cores / 2 threads, avx2 avx512f amx_int8), 23 GiB'."""
    flags = [f for f in device.get("isa_flags", []) if f in ("avx2", "avx512f", "avx512_vnni", "amx_int8", "sve")]
    gpus = ", ".join(g["name"] for g in device.get("gpus", []))
    text = (
        f"{device.get('cpu_model', '?')} ({device.get('cpu_physical_cores', '?')} cores / "
        f"{device.get('cpu_logical_cores', '?')} threads, {' '.join(flags) or 'no AVX2'}), "
        f"{device.get('memory_gib', '?')} GiB"
    )
    return f"{text}, {gpus}" if gpus else text


def cpu_isa_flags() -> list[str]:
    """This CPU's flags among `ISA_FLAGS`."""
    return _cpu_info()["isa_flags"]


def _cpu_info() -> dict[str, Any]:
    model, flags, cores = platform.processor() or platform.machine(), set(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        physical_id = "0"
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                model = value
            elif key in ("flags", "Features"):
                flags.update(value.split())
            elif key == "physical id":
                physical_id = value
            elif key == "core id":
                cores.add((physical_id, value))
    logical = os.cpu_count() or 1
    return {
        "cpu_model": model,
        "cpu_physical_cores": len(cores) or logical,
        "cpu_logical_cores": logical,
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
    }


def _memory_gib() -> int | None:
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2)
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3)
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[dict[str, Any]]:
    """CUDA devices, asked through torch (already imported by the profiler); none without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    driver = torch.version.cuda
    return [
        {
            "name": torch.cuda.get_device_name(i),
            "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 1024**3),
            "cuda": driver,
        }
        for i in range(torch.cuda.device_count())
    ]


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


COPY_TEST_BYTES = 1 << 30
COPY_TEST_REPEATS = 10


@functools.lru_cache(maxsize=None)
def memory_bandwidth(index: int = 0) -> dict[str, Any]:
    """Peak memory bandwidth of CUDA device `index` in GB/s (1e9 bytes/s), measured once per process.

    `spec_gb_s`: from the device properties (2 transfers per memory clock x bus width), when
    this torch reports them; `copy_gb_s`: a device-to-device copy of 1 GiB, best of 10 (each
    byte read once and written once). `peak_gb_s` is the specification when known, else the
    copy test; it is what `decode_bandwidth_fraction` divides by. Not part of the identity:
    a measured figure varies between runs.
    """
    import torch

    props = torch.cuda.get_device_properties(index)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0) or 0, getattr(props, "memory_bus_width", 0) or 0
    spec = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None
    with torch.cuda.device(index):
        source = torch.empty(COPY_TEST_BYTES, dtype=torch.uint8, device="cuda")
        target = torch.empty_like(source)
        target.copy_(source)  # first touch
        times = []
        for _ in range(COPY_TEST_REPEATS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            target.copy_(source)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        del source, target
        torch.cuda.empty_cache()
    copy = 2 * COPY_TEST_BYTES / (min(times) * 1e-3) / 1e9
    return {
        "index": index,
        "spec_gb_s": round(spec, 1) if spec else None,
        "copy_gb_s": round(copy, 1),
        "peak_gb_s": round(spec or copy, 1),
        "source": "device properties" if spec else "copy test",
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _thread_settings() -> dict[str, Any]:
    import torch

    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    return {"torch_num_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads()} | env
