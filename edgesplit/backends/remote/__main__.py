"""The zygote of the local cloud ranks: `python -m edgesplit.backends.remote FD`, FD the socket
to the edge that started it (forks.py)."""
import sys

from edgesplit.backends.remote.zygote import serve

if __name__ == "__main__":
    serve(int(sys.argv[1]))
