"""Datasets, their loaders and the resident training set."""
