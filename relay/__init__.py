"""relay: a WebRTC relay on Trio (TURN/STUN gateway, spreed signaling, observability)."""

__version__ = "0.1.0"
