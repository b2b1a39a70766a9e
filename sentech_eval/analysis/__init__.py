"""Numbers from results: pairing, statistics, summaries, paired comparison, the CI gate, the pairwise judge.

Imports core, ``backends`` (the judge) and ``engine`` (reading results) only; writes no files.
"""
