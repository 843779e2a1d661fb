"""The snapshot contract: schema, codec and shared-memory publication."""
