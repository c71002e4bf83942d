"""Closed-form edits of a UNet's cross-attention projections: TIME (``time.py``) and UCE (``uce.py``),
on the shared plumbing and math of ``common.py``."""
