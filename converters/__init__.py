"""doorface converters: rebuild, quantize, check and evaluate face models (offline, TensorFlow allowed)."""
