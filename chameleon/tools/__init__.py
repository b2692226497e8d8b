"""The product's tooling on top of the house: the `chameleon` CLI, the launcher, the benchmark and soak
drivers (gRPC/HTTP clients of a running system). May use processes, asyncio and the generated stubs;
never torch. Reaches router/ and shard/ only by module name at call time (importlib)."""
