"""The policy core: scheduler, adapter-cache policy, allocator, memory manager, predictor, the request
and adapter facts router and shard must agree on. Pure Python: no torch, grpc, asyncio or subprocess
(tests/test_architecture.py enforces it); time is an argument; deterministic under a seed. The same
objects drive the live router and the simulator."""
