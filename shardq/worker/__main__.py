"""``python -m shardq.worker module:app ...``: the same as ``shardq worker module:app ...``."""

import sys

from shardq.worker.cli import main

if __name__ == "__main__":
    sys.exit(main())
