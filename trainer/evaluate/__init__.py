"""Evaluation: sampling, labelling, informativity, the paper's reports."""
