"""Evaluation: metrics of generated samples (analytic mixtures now; images later)."""
