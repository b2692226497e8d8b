"""Shard workers: the generate.v3 server, the model forward, paged KV and multi-LoRA execution.

Importing `shard` has no side effects; process-wide settings (OMP_WAIT_POLICY) are made by the process
entries (shard.cli.main, shard.bench.main) before torch loads.
"""
