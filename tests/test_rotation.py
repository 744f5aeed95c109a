import pytest
import torch

from pretextlab.ops.rotation import rotate_batch_all_four


def test_each_output_is_its_input_rotated_by_its_label():
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    rotated, labels = rotate_batch_all_four(images)
    assert rotated.shape == (8, 3, 5, 5) and rotated.dtype == images.dtype
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for row in range(8):
        source = images[row % 2]
        k = int(labels[row])
        # Counter-clockwise by 90°·k, spelled out pixel by pixel for k = 1.
        assert torch.equal(rotated[row], torch.rot90(source, k, dims=(-2, -1)))
    # An explicit check of the convention: 90° CCW moves the top-right pixel to the top-left.
    assert rotated[2, 0, 0, 0] == images[0, 0, 0, 4]


def test_rotation_rejects_non_square_and_wrong_rank():
    with pytest.raises(ValueError, match="square"):
        rotate_batch_all_four(torch.zeros(1, 3, 4, 6))
    with pytest.raises(ValueError, match="B, C, H, W"):
        rotate_batch_all_four(torch.zeros(3, 4, 4))
