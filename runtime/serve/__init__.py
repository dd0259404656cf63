"""Serving: the batched model step, the pipelined stages, ingress from capture nodes, and the
serving engine that joins them."""
