"""The files the package writes, below every other room (it imports only mlc_jax.errors).

checked: a file written with a digest record and checked against it on read.
disk: a write the disk refused (full, read-only) said in one line: what, where, what is intact.
"""
