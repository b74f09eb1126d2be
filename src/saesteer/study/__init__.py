"""The end-to-end study (``saesteer reproduce``): harvest -> SAE -> features -> sweep -> evaluate -> report."""
