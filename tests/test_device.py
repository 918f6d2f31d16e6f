"""choose_device: an explicit name wins (and fails loudly when unavailable), else the best available."""
import pytest
import torch

from pipelines.device import choose_device


def test_explicit_cpu():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device(" CPU ") == torch.device("cpu")
    assert choose_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu", "cpu:0:1"])
def test_unknown_names(name):
    with pytest.raises(ValueError, match="unknown device"):
        choose_device(name)


def test_unavailable_cuda_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        choose_device("cuda:0")


def test_auto_order(monkeypatch):
    import pipelines.device as d

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(d, "_mps_available", lambda: False)
    assert choose_device() == torch.device("cpu")
    monkeypatch.setattr(d, "_mps_available", lambda: True)
    assert choose_device(None) == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto") == torch.device("cuda")
