"""``sentech-eval serve``: the Sentech-compatible server (flags and serving loop in ``server.serving``)."""

from __future__ import annotations

from sentech_eval.server.serving import parse_config, serve


def main(argv: list[str], prog: str = "sentech-eval serve") -> int:
    """Entry point of `sentech-eval serve`."""
    return serve(parse_config(argv, prog))
