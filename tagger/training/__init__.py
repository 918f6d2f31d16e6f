"""Training: the generator loop, the whole train command (fit), the presets and the run summary."""
