"""Shard workers: the generate.v3 server, the model forward, paged KV and multi-LoRA execution.

Import-time setting (it must precede torch's import, which loads OpenMP): torch's OpenMP workers sleep
as soon as a torch op ends (OMP_WAIT_POLICY=PASSIVE) instead of spinning for a while. The C kernels
(shard.model.cpu_kernels) run on their own worker threads between torch ops; a spinning OpenMP worker
holds the core they need: on a 2-core host a prefill ran 25-40% and a decode forward 13-43% slower
for it. An explicit OMP_WAIT_POLICY in the environment wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
