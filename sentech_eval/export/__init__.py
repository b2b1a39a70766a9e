"""Export finished runs and sweeps to an experiment tracker (MLflow, Weights & Biases), replayed from the Parquet."""
