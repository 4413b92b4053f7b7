"""Evaluate: the shipped models on held-out data (LFW verification, MTCNN detection), and their metrics."""
