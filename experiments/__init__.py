"""Experiments beside the main path: miniature.py (the paper's mechanism on a token tree and on the tiny
model) and theory.py (the token tree and the distinct-response theory check). Run them as scripts,
`python experiments/miniature.py ...`; tests import them as `experiments.miniature`."""
