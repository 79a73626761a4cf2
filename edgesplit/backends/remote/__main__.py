"""A local cloud rank: `python -m edgesplit.backends.remote RANK WORLD HOST PORT TIMEOUT THREADS`,
the shared secret and its StageSpec as JSON on stdin ({"secret": ..., "spec": ...})."""
import sys

from edgesplit.backends.remote.cloud_main import child_main

if __name__ == "__main__":
    rank, world, host, port, timeout_s, threads = sys.argv[1:7]
    child_main(int(rank), int(world), host, int(port), sys.stdin.buffer.read().decode(),
               float(timeout_s), int(threads))
