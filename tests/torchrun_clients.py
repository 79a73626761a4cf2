"""One torchrun rank of a many-edge run on one host (tests/test_clients_hosts.py), as K + 1 hosts
would each run train.py: rank 1 the cloud (role=cloud, the run secret), the others client k's edge
(role=edge, pipeline_backend.client=k, only that client's secret), clients in reverse rank order so
that the logical ranks are not torchrun's. `python tests/torchrun_clients.py RUN_DIR [overrides]`."""
import os
import runpy
import sys
from pathlib import Path

from edgesplit.backends.remote import auth
from edgesplit.clients.hosts import CLIENT_ENV

rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
run_dir, overrides = sys.argv[1], sys.argv[2:]
if rank == 1:
    role = ["pipeline_backend.role=cloud", f"hydra.run.dir={run_dir}"]
else:
    client = size - 1 - rank if rank else size - 2  # ranks 0, 2, 3, ... are clients K-1, K-2, ..., 0
    os.environ[CLIENT_ENV] = auth.client_secret(os.environ.pop(auth.ENV), client)
    role = ["pipeline_backend.role=edge", f"pipeline_backend.client={client}",
            f"hydra.run.dir={run_dir}-edge{client}"]
train = Path(__file__).resolve().parents[1] / "train.py"
sys.argv = [str(train), *overrides, *role]
runpy.run_path(str(train), run_name="__main__")
