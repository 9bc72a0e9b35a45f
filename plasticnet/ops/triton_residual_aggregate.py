"""Triton kernels for residual_aggregate (being written)."""
