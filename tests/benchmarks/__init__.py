"""Benchmarks (``make bench``): P1 saturation, P2 image path, P3 bookkeeping, P4 cache, memory.

Absolute times on shared machines are noisy, so every figure that has a target is a ratio measured side by side in
the same run, or CPU time (not wall time) per unit of work.
"""
