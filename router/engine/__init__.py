"""The router's serving engine: shard client, start-up, adapter registry, the serving loop.

Public surface (the seam with router/api): `Engine` (router.engine.entry), `EngineConfig`
(router.engine.config) and the request/event types in router.engine.types. No torch.
"""
