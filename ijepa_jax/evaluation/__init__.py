"""Evaluation of frozen I-JEPA encoders: feature extraction and probes."""
