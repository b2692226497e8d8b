"""Model execution: Llama-family forward with paged KV, tensor-parallel layers, the page pool."""
