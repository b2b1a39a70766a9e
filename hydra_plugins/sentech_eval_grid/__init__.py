"""sentech-eval's default sweeper, ``hydra/sweeper=grid`` (Hydra loads plugins from ``hydra_plugins``)."""
