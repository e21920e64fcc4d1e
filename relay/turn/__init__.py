"""The TURN server core: allocations, permissions, channels, auth, quotas, peer policy (sans-IO)."""
