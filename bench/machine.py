"""What every benchmark prints first: the device TensorFlow runs on, the CPU and its flags, the load.

Import it after TensorFlow's environment is set (`TF_CPP_MIN_LOG_LEVEL`); `describe_machine` imports
TensorFlow itself.
"""

from __future__ import annotations

import os
import platform

# CPU features that decide which kernels are fast: bf16 matmuls need AMX or AVX512-BF16.
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def has_bf16_matmul_hardware() -> bool:
    """True when the CPU has AMX-BF16 or AVX512-BF16 (TensorFlow's bf16 GEMMs are fast there)."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f}/{five:.1f}/{fifteen:.1f}"


def device() -> str:
    """The device TensorFlow places a float32 matmul on by default (a GPU when it sees one)."""
    import tensorflow as tf

    a = tf.ones([2, 2])
    return (a @ a).device or "unknown"


def describe_machine() -> str:
    import tensorflow as tf

    flags = cpu_flags()
    have = [f for f in FLAGS_OF_INTEREST if f in flags]
    missing = [f for f in FLAGS_OF_INTEREST if f not in flags]
    gpus = tf.config.list_physical_devices("GPU")
    return (
        f"device {device()} ({len(gpus)} GPU(s) visible); CPU {cpu_model()}, "
        f"{os.cpu_count()} logical cores; flags: {' '.join(have) or '-'}"
        f" (absent: {' '.join(missing) or '-'}); tensorflow {tf.__version__}; "
        f"load average (1/5/15 min) {load()}"
    )
