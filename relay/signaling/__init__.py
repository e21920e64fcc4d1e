"""The nextcloud-spreed-signaling compatible signaling server."""
