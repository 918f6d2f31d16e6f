"""tagger: photo tags from a conditional GAN over a word2vec space of Flickr tags (Mirza & Osindero 2014).

    import tagger
    model = tagger.load("path/to/bundle")        # a bundle made by `tagger train`; tagger.shipped.SHIPPED is the shipped one
    model.predict(["photo.jpg"], tagger.TagOptions(top_k=5))

The names below are imported on first use, so that `tagger --help` does not wait for torch.
"""
__version__ = "0.1.0"

_NAMES = {"load": "tagger.bundle", "save": "tagger.bundle", "Tagger": "tagger.model", "Tagged": "tagger.model",
          "Evidence": "tagger.scoring.evidence", "TagOptions": "tagger.scoring.options"}
__all__ = ["__version__", *_NAMES]


def __getattr__(name: str):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'tagger' has no attribute {name!r}")
