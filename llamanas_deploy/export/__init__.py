"""Export stage: sub-network -> verified, quantized, measured ONNX Runtime artifact.

`pipeline.export_artifact` runs it end to end from the ONNX pieces in `onnx_model/`
(I/O config, exporter, quantizer, artifact files); `verify` checks ORT against torch and the
quantized model against fp32; `bench` measures the artifact with the profiler's protocol.
"""
