"""Evaluation of a labelled image set through the real pipeline, with LlavaGuard's metrics."""
