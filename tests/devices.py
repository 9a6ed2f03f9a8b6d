"""The devices that device-dependent tests run on: the CPU always, and CUDA on a machine that
has it (CI has none). On a GPU machine, ``python -m pytest -k cuda`` runs the CUDA cases alone."""

from __future__ import annotations

import torch

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
ACCELERATOR = {"cpu": "cpu", "cuda": "gpu"}
"""``runtime.accelerator`` for a device of ``DEVICES``."""
