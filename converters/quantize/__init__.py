"""Quantize and check: Keras → full-integer int8 TFLite, the shared helpers that normalise pixels and run and time a
converted model, and the op checks (float islands, EdgeTPU compatibility)."""
