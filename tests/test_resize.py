"""bilinear_to_channels_last: the interpolation kernel's values and gradients, channels last."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from pretextlab.ops.resize import MATRIX_MAX_SOURCE_PIXELS, bilinear_to_channels_last


@pytest.mark.parametrize(("source", "target"), [((4, 4), (8, 8)), ((2, 3), (7, 5)), ((4, 4), (4, 4)),
                                                 ((12, 12), (24, 24)), ((8, 8), (3, 3))])
def test_matches_interpolate_in_values_and_gradients(source, target):
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 5, *source, generator=generator)
    upstream = torch.randn(3, *target, 5, generator=generator)
    ours_input, reference_input = maps.clone().requires_grad_(), maps.clone().requires_grad_()
    ours = bilinear_to_channels_last(ours_input, target)
    reference = F.interpolate(reference_input, size=target, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    assert ours.is_contiguous() and ours.shape == (3, *target, 5)
    assert torch.allclose(ours, reference, atol=1e-5)
    (ours * upstream).sum().backward()
    (reference * upstream).sum().backward()
    assert ours_input.grad is not None and reference_input.grad is not None
    assert torch.allclose(ours_input.grad, reference_input.grad, atol=1e-5)


def test_both_paths_are_exercised_by_the_cases_above():
    assert 4 * 4 <= MATRIX_MAX_SOURCE_PIXELS < 12 * 12


def test_refuses_maps_without_batch_and_channel_dims():
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        bilinear_to_channels_last(torch.rand(4, 4), (8, 8))
