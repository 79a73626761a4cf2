"""The zygote of the local cloud ranks: `python -m edgesplit.backends.remote FD`, FD the socket
to the edge that started it (forks.py)."""
import os
import sys

from edgesplit.backends.remote.zygote import serve

if __name__ == "__main__":
    serve(int(sys.argv[1]))
    sys.stderr.flush()
    os._exit(0)  # the interpreter's teardown of torch's modules takes seconds, with nothing to keep
