"""Tagging a library: batch runs (plan, results, failures), sidecars, and the engines that execute a run."""
