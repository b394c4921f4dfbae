"""Export parity at AudioLDM-S size (slow: minutes and several GB; run with -m slow)."""

import pytest
import torch

from reaudio.export.onnx_export import check_parity, export_stage, ort_session
from reaudio.models.configs import load_config
from reaudio.models.unet import UNet


@pytest.mark.slow
def test_audioldm_s_denoiser_parity(tmp_path):
    cfg = load_config("audioldm-s")
    torch.manual_seed(0)
    models = {"unet": UNet(cfg.unet).eval()}
    path = tmp_path / "denoiser.onnx"
    export_stage("denoiser", cfg, models, path)
    results = check_parity("denoiser", cfg, models, path, cases=[(1, 125), (1, 256)], session=ort_session(path))
    assert max(r.rel for r in results) <= 1e-4
