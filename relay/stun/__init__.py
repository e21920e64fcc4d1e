"""The STUN/TURN wire codec (sans-IO; never imports trio)."""
