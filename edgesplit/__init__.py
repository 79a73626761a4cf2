"""edgesplit: train a network split between an edge device and the cloud, with compressed boundaries."""

__version__ = "0.1.0"
