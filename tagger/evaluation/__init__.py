"""Evaluation: the metrics, `tagger evaluate`, the audit of unwanted kinds of tags, and the HTML report."""
