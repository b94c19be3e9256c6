"""`torch`: PyTorch on the CPU (eager) or a CUDA GPU (CUDA graphs), fp32 or bf16; `torch-eager` on the GPU too.

Prefill runs the prompt and computes logits for its last position only (as generation
does); decode runs one token against a KV cache of exactly `context_len` tokens (the cache
is cut back after every step, untimed); generate is a greedy loop: prefill, then
`gen_len - 1` decode steps, so `gen_len` tokens come out per sequence.

On CUDA, decode and generation replay CUDA graphs over a static KV cache, as a GPU server
deploys a model (`cuda_graphs.py`); `torch-eager` keeps HF eager for comparison. Times come
from CUDA events and peak memory from the caching allocator; every GPU record carries how
it ran (`execution`) and the achieved fraction of memory bandwidth of its decode step.
"""

from __future__ import annotations

from typing import Any

from ...analytics import decode_step_bytes
from ...errors import LlamanasError
from ...model.compat import forward_with_cache, returned_cache
from ...model.families import read_shape
from ...subnet_config import SubnetConfig
from ..base import Backend, BackendUnavailable, MemoryProbe, Shapes, Workload
from ..fingerprint import memory_bandwidth
from ..weights import subnet_model, weights_source

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


class TorchBackend(Backend):
    name = "torch"
    precisions = ("fp32", "bf16")
    devices = ("cpu", "cuda")
    cuda_graphs = True  # on CUDA: decode and generation through CUDA graphs (`torch-eager`: False)

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"cuda: this torch ({torch.__version__}) sees no CUDA GPU", param="device")

    def __init__(self, *args: Any, **kwargs: Any):
        import torch

        super().__init__(*args, **kwargs)
        torch.set_num_threads(self.threads)
        self._dtype = getattr(torch, DTYPES[self.precision])
        self._source = weights_source(self.model, self.weights)
        self._net = None
        self._graphs = None  # the loaded sub-network's `cuda_graphs.GraphDecoder` on CUDA

    @property
    def weights_source(self) -> str:
        return self._source

    # ---- one sub-network -------------------------------------------------------------------
    def load(self, subnet: SubnetConfig) -> int:
        net = subnet_model(self.model, subnet, self._dtype, self._source, self.seed, device=self.device)
        self._vocab = net.config.vocab_size
        nbytes = sum(p.numel() * p.element_size() for p in net.parameters())
        self._net = self.prepare(net)
        if self.uses_cuda_graphs:
            from .cuda_graphs import GraphDecoder

            self._graphs = GraphDecoder(self._net, self._vocab, self.seed)
        return nbytes

    @property
    def uses_cuda_graphs(self) -> bool:
        return self.device == "cuda" and self.cuda_graphs

    def prepare(self, net):
        """Hook for subclasses that transform the eager model (compile, optimize)."""
        return net

    def record_extra(self, subnet: SubnetConfig, shapes: Shapes) -> dict[str, Any]:
        """On CUDA: how decode ran, the bytes a decode step must read, and the device's peak bandwidth."""
        if self.device != "cuda":
            return {}
        import torch

        value_bytes = torch.empty((), dtype=self._dtype).element_size()
        return {
            "execution": "cuda-graphs" if self.uses_cuda_graphs else "eager",
            "decode_bytes_per_step": decode_step_bytes(
                read_shape(self.model), subnet, shapes.context_len, shapes.batch_size, value_bytes
            ),
            "peak_bandwidth_gb_s": memory_bandwidth(torch.cuda.current_device())["peak_gb_s"],
        }

    def unload(self) -> None:
        self._net = self._graphs = None
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    # ---- workloads -------------------------------------------------------------------------
    def prefill(self, shapes: Shapes) -> Workload:
        ids = self._tokens(shapes.batch_size, shapes.prompt_len)
        return Workload(run=lambda: self._forward(ids, None, logits_to_keep=1))

    def decode(self, shapes: Shapes) -> Workload:
        if self._graphs is not None:
            return Workload(run=self._graphs.fixed_context(shapes.batch_size, shapes.context_len, self.device))
        cache = returned_cache(self._forward(self._tokens(shapes.batch_size, shapes.context_len), None, logits_to_keep=1))
        step = self._tokens(shapes.batch_size, 1)

        def cut_back() -> None:
            extra = cache.get_seq_length() - shapes.context_len
            if extra:
                cache.crop(-extra)
            if cache.get_seq_length() != shapes.context_len:
                raise LlamanasError(f"KV cache holds {cache.get_seq_length()} tokens, expected {shapes.context_len}")

        return Workload(run=lambda: self._forward(step, cache), reset=cut_back)

    def generate(self, shapes: Shapes) -> Workload:
        if self._graphs is not None:
            return Workload(run=self._graphs.generation(shapes.batch_size, shapes.prompt_len, shapes.gen_len, self.device))
        prompt = self._tokens(shapes.batch_size, shapes.prompt_len)

        def run() -> None:
            out = self._forward(prompt, None, logits_to_keep=1)
            for _ in range(shapes.gen_len - 1):
                token = out.logits[:, -1:].argmax(dim=-1)
                out = self._forward(token, returned_cache(out))

        return Workload(run=run)

    def _tokens(self, batch: int, length: int):
        import torch

        gen = torch.Generator().manual_seed(self.seed)
        return torch.randint(0, self._vocab, (batch, length), generator=gen).to(self.device)

    def _forward(self, ids, cache, logits_to_keep: int = 0):
        import torch

        with torch.inference_mode():
            return forward_with_cache(self._net, cache, input_ids=ids, use_cache=True, logits_to_keep=logits_to_keep)

    # ---- device hooks ----------------------------------------------------------------------
    def synchronize(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def time_ms(self, workload: Workload) -> float:
        if self.device != "cuda":
            return super().time_ms(workload)
        import torch

        if workload.reset is not None:
            workload.reset()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        workload.run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def memory_probe(self) -> MemoryProbe:
        return CudaMemoryProbe() if self.device == "cuda" else super().memory_probe()


class TorchEagerBackend(TorchBackend):
    """`torch-eager`: HF eager on CUDA too (one Python-launched step at a time), for comparison with graphs."""

    name = "torch-eager"
    cuda_graphs = False


class CudaMemoryProbe(MemoryProbe):
    """Peak bytes held by torch's CUDA caching allocator above the starting level."""

    def start(self) -> None:
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self._baseline = torch.cuda.memory_allocated()

    def peak_mib(self) -> float:
        import torch

        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - self._baseline) / 1024**2
