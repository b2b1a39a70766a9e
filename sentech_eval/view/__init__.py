"""``sentech-eval view``: a local, read-only results browser (aiohttp, server-rendered pages).

discovery finds the runs under the given dirs, digest computes each run's numbers with ``analysis/``
and its pictures with ``render/`` (in a worker process, cached by file identity in the user cache dir),
rows pages through a run's Parquet by row groups, pages renders the HTML and app serves it.
"""
