"""Reproducible training, reporting and Seldon serving for tabular classification."""
