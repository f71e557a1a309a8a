"""TensorRT INT8 engines from explicit-quantization (QDQ) ONNX: the parser's rules checked here without
TensorRT (`rules`), and the engine build, run, timing and version manifest on the device (`engine`).
Neither module imports `tensorrt` at import time."""
