"""What a run ran on: Python, the platform, the CPU and GPU, the thread count and the versions
of the packages that decide its numbers (recorded in ``manifest.json``, shown by ``clight
report``, compared by ``clight compare``)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

#: the packages whose versions are recorded (those that change a run's numbers or its code path)
PACKAGES = ("torch", "torchvision", "lightning", "numpy", "scikit-learn", "transformers", "peft", "timm", "jsonargparse")


def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def _clight_commit() -> Optional[str]:
    """The git commit clight runs from (with ``+changes`` when its files differ from it), if it is a checkout."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "clight"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip()[:12] + ("+changes" if dirty.stdout.strip() else "")


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """This process's environment as plain values (computed once)."""
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch dispatches to (AVX512, AVX2, ...)
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "gpus": _gpus(),
        "cuda": torch.version.cuda,
        "packages": {name: _version(name) for name in PACKAGES},
        "clight": _version("clight") or "not installed",
        "clight_commit": _clight_commit(),
        "hostname": platform.node(),
        "executable": sys.executable,
    }


def with_current(environments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's environments with this process's added when it differs from the last one's."""
    current = environment()
    if environments and not differences(environments[-1], current):
        return environments
    return [*environments, current]


def _flat(env: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in env.items() if k != "packages"}
    flat.update({f"packages.{k}": v for k, v in (env.get("packages") or {}).items()})
    return flat


#: what may change a run's numbers when it differs (the rest is shown, not warned about)
RESULT_KEYS = ("python", "cpu", "cpu_capability", "torch_threads", "gpus", "cuda", "clight_commit") + tuple(
    f"packages.{p}" for p in PACKAGES
)


def differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (a's value, b's value)}`` for the keys of ``RESULT_KEYS`` where two environments differ."""
    fa, fb = _flat(a), _flat(b)
    return {k: (fa.get(k), fb.get(k)) for k in RESULT_KEYS if fa.get(k) != fb.get(k)}


def summary(env: dict[str, Any]) -> str:
    """One line: Python, torch, lightning, numpy, the device and the threads."""
    packages = env.get("packages") or {}
    device = ", ".join(env.get("gpus") or []) or env.get("cpu") or "?"
    versions = ", ".join(f"{p} {packages[p]}" for p in ("torch", "lightning", "numpy", "transformers") if packages.get(p))
    threads, isa = env.get("torch_threads"), env.get("cpu_capability")
    kernels = f" ({isa} kernels)" if isa else ""
    return f"Python {env.get('python')}, {versions}; {device}{kernels}, {threads} thread(s); {env.get('platform')}"
