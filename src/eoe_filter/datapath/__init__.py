"""Forwarding loops: they move frames between two ports through a relay's edits, and nothing else."""
