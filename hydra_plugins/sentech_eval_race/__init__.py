"""sentech-eval's Hydra sweeper plugin: ``hydra/sweeper=race`` (Hydra loads plugins from ``hydra_plugins``)."""
