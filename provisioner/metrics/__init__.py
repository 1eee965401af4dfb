"""Prometheus metrics of the line: what each process counts, and how they are served."""
