"""The runners: one loaded artefact each, sharing `runtime.contract.kinds.Runner`'s interface.

- `onnxruntime_model.OnnxModel`: ONNX Runtime (CPU, CUDA, TensorRT providers), with
  `io_binding.BoundBuffers` for buffers bound once per batch size on a GPU;
- `openvino_model.OpenVinoModel`: OpenVINO's CPU plugin (an IR, or an ONNX file);
- `tensorrt_engine.TensorRTEngine`: a serialized TensorRT engine;
- `environment`: what this machine can run (driver, libraries, provider names);
- `validation`: the input checks every runner applies.

Which runner loads which file is the contract's business (`runtime.contract.kinds.open_runner`).
"""
