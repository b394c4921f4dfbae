import pytest
import torch

from reaudio.models.layers import pool_tokens


@pytest.mark.parametrize("length, num", [(7, 4), (16, 8), (63, 32), (3, 4), (125, 32)])
def test_pool_tokens_equals_adaptive_average_pooling(length, num):
    x = torch.randn(2, length, 5)
    expected = torch.nn.functional.adaptive_avg_pool1d(x.transpose(1, 2), num).transpose(1, 2)
    torch.testing.assert_close(pool_tokens(x, num), expected)
