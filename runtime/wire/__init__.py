"""The wire: the ZeroMQ protocol, frame encodings, socket security and the Python subscriber."""
