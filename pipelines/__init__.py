"""Turning photos and tags into arrays: dataset readers, image decoding, backbones and features.

Imports from `embeddings` only, never from `tagger`.
"""
