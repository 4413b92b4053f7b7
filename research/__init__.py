"""doorface research: the NNS1/NNS2 student embedders (FaceNet's small Inception nets), their training, learning
curves and run reports. Run it with ``python -m research``; see docs/research.md.

Nothing in ``edge/`` or ``converters/`` imports this package (tests/test_packaging.py checks): the product runs and
rebuilds its models without it. It needs the converters' extra (TensorFlow).
"""
