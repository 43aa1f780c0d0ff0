"""Custom operations: oneDNN convolutions on the CPU through jax.ffi (conv.py, csrc/)."""
