"""llama.cpp engine: continuous batching over llama-cpp-python's low-level ctypes API."""
