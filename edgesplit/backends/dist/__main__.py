"""A local cloud rank: `python -m edgesplit.backends.dist RANK WORLD HOST PORT TIMEOUT THREADS`."""
import sys

from edgesplit.backends.dist.cloud import child_main

if __name__ == "__main__":
    rank, world, host, port, timeout_s, threads = sys.argv[1:7]
    child_main(int(rank), int(world), host, int(port), sys.stdin.buffer.read(), float(timeout_s),
               int(threads))
