"""The tag space: tag normalization and vocabulary, skip-gram word vectors, and the FAISS tag index.

Needs no torch and imports nothing from `pipelines` or `tagger`.
"""
