"""The dist backend: the edge and the cloud stages as processes linked by torch.distributed."""
from edgesplit.backends.dist.cloud import run_cloud
from edgesplit.backends.dist.edge import DistBackend

__all__ = ["DistBackend", "run_cloud"]
