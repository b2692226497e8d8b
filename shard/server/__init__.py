"""The shard's generate.v3 server: servicer, batches, sampling, stopping, detokenization, warmup."""
