"""Benchmark building blocks: traffic generator and sink, the C baseline, lab measurements."""
