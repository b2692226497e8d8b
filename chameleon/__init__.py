"""Chameleon's policy core: scheduler, adapter-cache policy, allocator, workload and simulator.

Pure Python. Importing this package never imports torch, grpc or asyncio; the same objects drive
the live router and the simulator.
"""

__version__ = "0.1.0"
