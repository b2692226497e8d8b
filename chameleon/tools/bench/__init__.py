"""Load clients for a running Chameleon system: `chameleon bench` (open-loop trace replay over gRPC
streaming) and `chameleon bench-compare` (launch each policy configuration, replay the same requests,
compare; also measure a simulator cost profile of this system)."""
