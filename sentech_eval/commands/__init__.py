"""One module per ``sentech-eval`` subcommand: argument parsing, Hydra entry points, files written.

The top floor: may import every other floor; nothing imports it (``sentech_eval.cli`` dispatches by name).
"""
