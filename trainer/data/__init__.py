"""Datasets: stores, sources (videos, s2i_data, demo) and batches."""
