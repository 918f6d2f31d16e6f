"""tagger: tag photos with a conditional GAN that generates word vectors (Mirza & Osindero 2014)."""

__version__ = "0.1.0"
