"""A run's records: summary.json, TensorBoard, metrics.csv, MLflow."""
