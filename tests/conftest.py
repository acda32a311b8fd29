import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_pixel_teacher_dir(tmp_path_factory):
    from tiny_models import write_tiny_pixel_teacher

    vocabulary = {"categories": ["chair", "mug"], "colours": ["red", "blue"], "views": ["front", "side", "back"]}
    return write_tiny_pixel_teacher(tmp_path_factory.mktemp("pixel-teacher"), vocabulary=vocabulary)


@pytest.fixture(scope="session")
def tiny_sd_teacher_dir(tmp_path_factory):
    from tiny_models import write_tiny_sd_teacher

    return write_tiny_sd_teacher(tmp_path_factory.mktemp("sd-teacher"))


@pytest.fixture(scope="session")
def tiny_sd_toy_teacher_dir(tmp_path_factory):
    """The tiny random SD teacher with toy-sd's notes (a toy vocabulary, so distillation has prompts to draw)."""
    from tiny_models import write_tiny_sd_teacher

    vocabulary = {"categories": ["chair", "mug"], "colours": ["red", "blue"], "views": ["front", "side", "back"]}
    return write_tiny_sd_teacher(tmp_path_factory.mktemp("sd-toy-teacher"), vocabulary=vocabulary)
