"""Export stage: sub-network -> verified, quantized, measured ONNX Runtime artifact.

`pipeline.export_artifact` runs it end to end; `config` (I/O names and axes per architecture),
`onnx_export`, `quantize`, `verify`, `artifact` and `bench` are its steps. Importing this
package imports nothing heavy (the runtime reads artifacts through `artifact` without torch).
"""
