"""The engine: read a dataset, send every item through a backend, record rows, write results.

Imports core, ``backends`` and ``scorers`` only (see ``tests/test_layers.py``).
"""
