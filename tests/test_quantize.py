"""clbench.quantize: the stored form of a module's weights, shared by baselines and TN+EN."""

import pytest
import torch
from torch import nn

from clbench.quantize import (
    DTYPES,
    dequantize_into,
    pack_int4,
    quantize,
    round_to_storage,
    unpack_int4,
)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_to_storage_puts_weights_on_the_stored_grid(dtype):
    net = small_net()
    original = [p.detach().clone() for p in net.parameters()]
    stored = quantize(round_to_storage(net, dtype), dtype)
    # rounding twice changes nothing: what is checked during training is what is stored
    again = dequantize_into(small_net(), stored)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters(),
                                                  strict=True))
    bound = {"float32": 0, "float16": 1e-3, "bfloat16": 4e-3, "int8": 1 / 127 / 2,
             "int4": 1 / 7 / 2}[dtype]
    for before, after in zip(original, net.parameters(), strict=True):
        peak = before.abs().amax(dim=-1, keepdim=True) if before.dim() > 1 else before.abs().max()
        assert ((after - before).abs() <= bound * peak + 1e-12).all()


def test_int8_storage_takes_a_byte_per_weight_plus_a_scale_per_row():
    stored = quantize(small_net(), "int8")
    assert stored["values"].dtype == torch.int8
    assert stored["values"].numel() == 7 * 5 + 5 + 5 * 3 + 3
    assert stored["scales"].numel() == 5 + 1 + 3 + 1


def test_unknown_dtype_is_named():
    with pytest.raises(ValueError, match="dtype='int2'"):
        quantize(small_net(), "int2")


def test_int4_packs_two_values_a_byte_and_unpacks_them_exactly():
    values = torch.tensor([-7, 7, 0, 3, -1], dtype=torch.int8)
    packed = pack_int4(values)
    assert packed.dtype == torch.uint8 and packed.tolist() == [1 | 15 << 4, 8 | 11 << 4, 7 | 8 << 4]
    assert torch.equal(unpack_int4(packed, 5), values)


def test_delta_from_a_base_stores_the_change_and_adds_it_back():
    net, base = small_net(), nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3))
    stored = quantize(net, "float32", base=base)
    change = [p - b for p, b in zip(net.parameters(), base.parameters(), strict=True)]
    assert torch.equal(stored["weights"], torch.cat([c.detach().flatten() for c in change]))
    blank = nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3)).requires_grad_(False)
    restored = dequantize_into(blank.apply(lambda m: [p.zero_() for p in m.parameters()]), stored,
                               base=base)
    for weight, again in zip(net.parameters(), restored.parameters(), strict=True):
        assert torch.allclose(weight, again, atol=1e-6)
