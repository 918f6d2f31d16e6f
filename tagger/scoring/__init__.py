"""Tagging: from raw image features to ranked, calibrated tags.

One scorer per method (generator votes, kNN, prior, their sum), the sampling and voting behind the
generator scorer, what the generator is conditioned on, the word space the votes are counted in,
the calibration of raw scores into probabilities, the evidence the pixels give, and the options of
one tagging call.
"""
