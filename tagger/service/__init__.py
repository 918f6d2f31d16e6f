"""The HTTP service (`tagger serve`) and its web page."""
