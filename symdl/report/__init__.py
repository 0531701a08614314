"""Stage 8, report: the demo (train a network with generated kernels) and its LaTeX report."""
