"""`--target`: which variants an export builds for the hardware it is meant for, and where they race.

| target     | builds (each behind its gate)        | raced in                                  | without the hardware |
| ---------- | ------------------------------------ | ----------------------------------------- | -------------------- |
| `cpu`      | opt, ov-bf16, ov-int8                | onnxruntime-cpu, openvino-cpu             | (always there)       |
| `cuda`     | fp16, cuda-fp16, trt-fp16            | onnxruntime-cuda, onnxruntime-tensorrt, tensorrt | the rule below, not raced |
| `portable` | nothing: the plain fp32 file         | -                                         | -                    |
| `auto`     | `cuda` where this machine runs ONNX Runtime's CUDA provider, else `cpu` |   |                      |

Why these: on a CPU, OpenVINO's int8 (`ov-int8`) is the fast file, `ov-bf16` where the CPU has
bf16 (skipped, with the reason, where it has not) and `opt` is ONNX Runtime's fastest fp32.
ONNX Runtime's dynamic `int8` is left out: it lost to `ov-int8` on every CPU measured but at
batch 1 on one (2-core Intel Xeon with AMX: 2.45x-3.0x the plain file against ov-int8's
3.1x-7.4x, docs/benchmarks.md; 2-core AMD EPYC (no AMX): 2.98x / 2.55x at batch 1 / 8 against
3.41x / 3.69x, as reported with the request for --target; 2-core AMD EPYC with AVX-512 VNNI /
BF16, base-size `outliers` stress checkpoint, both from the full search: 47.4 / 360.3 ms against
ov-int8's 50.1 / 243.4, `python benchmarks/run.py --quick --artefacts DIR --backends ort-cpu
openvino-default --variants plain,int8,ov-int8 --rounds 2`), and its accuracy-aware search
(145 s there, the full search; the whole `--target cpu` export took 200 s) would nearly double
the export's time. Where no int8 file is faster (the race on a 2-core AVX2-only AMD EPYC, Zen 3,
found the base-size stress checkpoint's ov-int8 slower than the plain file; on one with AVX-512
VNNI and BF16 it ran 3.0x / 4.3x as fast as the plain file in ONNX Runtime at batch 1 / 8 in the
export's race, docs/benchmarks.md), the race picks the plain file. A host that runs ONNX Runtime
alone gets `opt`; add `--variants int8` to race ONNX Runtime's int8 as well. `int8-qdq` is for runtimes
other than ONNX Runtime's CPU provider. On an NVIDIA GPU, the rule where no race can run is
`cuda-fp16` for the image tower (ONNX Runtime's GPU fusions then its fp16 conversion, the recipe
measured fastest for the CUDA provider on an H200) and `fp16` for the text tower (`cuda-fp16` is
made for the image tower only). The plain fp32 file is always built and raced too.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from runtime.contract.selection import CPU_RUNTIMES, GPU_RUNTIMES
from runtime.errors import UserError


@dataclass(frozen=True)
class Target:
    name: str
    variants: tuple[str, ...]
    runtimes: tuple[str, ...]  # where the published files are raced
    rule: dict[str, str] = field(default_factory=dict)  # tower -> variant, where the race cannot run here
    needs: tuple[str, ...] = ()  # modules the target's race needs (its runtimes)


TARGETS = {
    "cpu": Target("cpu", ("opt", "ov-bf16", "ov-int8"), CPU_RUNTIMES, needs=("openvino", "nncf")),
    "cuda": Target("cuda", ("fp16", "cuda-fp16", "trt-fp16"), GPU_RUNTIMES,
                   rule={"vision": "cuda-fp16", "text": "fp16"}),
    "portable": Target("portable", (), ()),
}
CHOICES = ("auto", *TARGETS)


def gpu_here() -> bool:
    """Whether this machine runs ONNX Runtime's CUDA provider (`cuda_provider_here`, as the runtime asks)."""
    from runtime.runners.environment import cuda_provider_here

    return cuda_provider_here()


def resolve(name: str) -> Target:
    """The target `name` stands for on this machine, checked: UserError for an unknown name, or a
    target whose race needs a runtime that is not installed."""
    if name not in CHOICES:
        raise UserError(f"unknown target {name!r} (choose from {', '.join(CHOICES)})")
    target = TARGETS[("cuda" if gpu_here() else "cpu") if name == "auto" else name]
    missing = [m for m in target.needs if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"--target {target.name} builds and races OpenVINO's files too, and {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not installed: pip install \"siglip-export[openvino]\" "
                        f"(or --target portable)")
    return target


__all__ = ["CHOICES", "TARGETS", "Target", "gpu_here", "resolve"]
