"""Triton kernels for the CUDA backend, each with a pure-torch reference (shard.kernels.reference).

- attention: paged decode attention and variable-length (chunked) prefill attention over the pool's
  KV pages (layout of shard.model.pool: per layer K/V caches [pages, block_size, kv_heads, head_dim]).
- lora: multi-LoRA SGMV shrink/expand over segments of rows, heterogeneous ranks in one launch, adapter
  weights read in place from the shared page pool (layout of shard.lora.store; see lora.LoraTable).

Importing this package imports triton. Tests run the kernels on CPU tensors through Triton's interpreter
(TRITON_INTERPRET=1 must be set before triton is imported; tests/shard_kernels/conftest.py does it).
"""
