"""The ONNX model of a sub-network, below the stages that use it (profile, export, runtime).

- `config`: the declarative I/O of a decoder with a KV cache, per architecture (Optimum names);
- `graphs`: which graph a device deploys (`fused` on the CPU, `dynamo` elsewhere) and its export;
- `fused`: the fused CPU graph emitted from the sub-network's tensors (ORT contrib ops);
- `exporter`: torch -> ONNX through `torch.onnx.export(dynamo=True)`;
- `quantize`: ONNX Runtime's int8 / int4 quantizers with the settings this device wants;
- `artifact`: the artifact directory's files (manifest with hashes, genai_config, tokenizer).

Importing this package imports nothing heavy; `artifact` needs no torch (the runtime reads it).
"""
