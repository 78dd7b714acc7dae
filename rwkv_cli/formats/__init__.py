"""The file formats layer: rwkv.cpp model files, PyTorch `.pth` and safetensors checkpoints,
conversion between them, and random-weight models for tests and benchmarks."""
