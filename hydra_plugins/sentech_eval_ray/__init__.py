"""sentech-eval's Ray launcher: ``hydra/launcher=ray`` (a local instance) and ``ray_cluster`` (an existing cluster)."""
