"""Router-side tools that need the engine's internals (not the serving path)."""
