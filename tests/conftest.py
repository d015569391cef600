"""Shared pytest fixtures: tiny offline models and data built in temporary directories."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_vggish_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding random-weight VGGish + PCA files under the release names (real architecture)."""
    from torchvggish.torchvggish import VGG, make_layers

    from mmser.encoders.vggish import VGGISH_PCA, VGGISH_WEIGHTS

    directory = tmp_path_factory.mktemp("vggish_weights")
    torch.manual_seed(0)
    model = VGG(make_layers(), postprocess=False)  # postprocess=False: its Postprocessor downloads
    torch.save(model.state_dict(), directory / VGGISH_WEIGHTS)
    # Eigenvectors scaled so that PCA outputs spread over the [-2, 2] quantisation range.
    pca = {
        "pca_eigen_vectors": torch.randn(128, 128) * 20.0,
        "pca_means": torch.randn(128, 1) * 0.01,
    }
    torch.save(pca, directory / VGGISH_PCA)
    return directory
