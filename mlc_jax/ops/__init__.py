"""CPU performance: oneDNN convolutions through jax.ffi (conv.py, csrc/) and host memory kept between
steps (host_memory.py)."""
