"""Console scripts (s2i-stream, s2i-serve, s2i-capture, s2i-view, s2i-keys): flags and wiring only;
the engine lives in the role folders."""
