"""Torch networks -> ONNX stage graphs with metadata, and their parity checks."""
