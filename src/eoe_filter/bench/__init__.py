"""Benchmark building blocks: traffic generator and sink, the C baseline, /proc readers, the lab's shared pieces."""
