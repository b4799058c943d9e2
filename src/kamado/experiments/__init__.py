"""Controlled experiments on kamado's own corpus (`kamado experiment ...`), with their results pages in experiments/."""
