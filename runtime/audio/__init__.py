"""Audio in: decoding files, live sources (microphone, files, stdin), the ring buffer."""
