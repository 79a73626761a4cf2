"""The remote backend (`pipeline_backend=dist`): the edge and the cloud stages as processes
linked by torch.distributed point-to-point messages."""
from edgesplit.backends.remote.cloud_main import run_cloud
from edgesplit.backends.remote.edge import RemoteBackend

__all__ = ["RemoteBackend", "run_cloud"]
