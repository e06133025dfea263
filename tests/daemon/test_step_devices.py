"""The step engine's cache compaction with layers on different devices (a layer split across GPUs).

Needs a GPU: one layer's cache lives on cuda:0 and another's on the CPU, as with accelerate's
device_map over GPUs (and CPU offload); the row index must reach each layer on that layer's device.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from deepseek_node.daemon.engines.builtin.backend_step import StepBackend, _Row
from deepseek_node.daemon.engines.builtin.engine import BackendSequence

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)"),
]


def test_compaction_indexes_each_layer_on_its_own_device() -> None:
    b = StepBackend.__new__(StepBackend)
    b.device = torch.device("cuda:0")
    seq = BackendSequence("s", [1, 2], 4, (), 0.0, 1.0, 0)
    b._rows = [_Row(seq=seq, length=2), _Row(seq=seq, length=2), _Row(seq=seq, length=2)]
    b._rows[1].done = True
    b._mask = torch.ones((3, 5), dtype=torch.long, device="cuda:0")
    layers = [
        SimpleNamespace(keys=torch.randn(3, 2, 5, 8, device=dev), values=torch.randn(3, 2, 5, 8, device=dev))
        for dev in ("cuda:0", "cpu")
    ]
    expect = [layer.keys[[0, 2]].cpu() for layer in layers]
    b._cache = SimpleNamespace(layers=layers)
    b._compact()
    assert [layer.keys.device.type for layer in layers] == ["cuda", "cpu"]
    for layer, want in zip(layers, expect, strict=True):
        assert torch.equal(layer.keys.cpu(), want)
    assert len(b._rows) == 2
