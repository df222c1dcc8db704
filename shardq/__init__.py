"""shardq: a sharded, durable task-queue broker."""

__version__ = "0.1.0"

