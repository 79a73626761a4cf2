"""`python -m edgesplit.report DIR...`."""
import sys

from edgesplit.report.build import main

if __name__ == "__main__":
    sys.exit(main())
