"""What machine a benchmark ran on (recorded beside every measured number)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def device_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU model, core count, torch threads and version, load average, and the GPU name on CUDA."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info: dict[str, Any] = {
        "device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "load_average_at_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
