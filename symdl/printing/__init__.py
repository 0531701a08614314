"""Stage 5, printing: IR back into SymPy (matrix notation where a pattern is recognised),
plain text for the terminal and LaTeX documents."""
