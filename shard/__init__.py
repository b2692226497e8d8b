"""Shard workers: the generate.v3 server, the model forward, paged KV and multi-LoRA execution."""
