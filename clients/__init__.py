"""Command-line clients of the streamer websocket server (file and microphone)."""
