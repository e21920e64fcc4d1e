"""The only code that touches sockets: UDP listeners, relay sockets, the drain loops."""
