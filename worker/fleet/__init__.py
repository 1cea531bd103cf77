"""The GPU fleet launcher behind ``guardq worker --gpus``: plan (launcher), GPU discovery (gpus), child processes
(procs) and their supervision (supervisor)."""
