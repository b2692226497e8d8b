"""Small-batch float32 CPU kernels (cpu_kernels.c), compiled with the system gcc at first use.

Why: decode multiplies a few token rows by large weights; MKL's sgemm with small M reads the weights
far below the machine's read bandwidth. The C kernels stream each weight row once against all rows.

Contract:
- `CpuKernels.load()` compiles (or finds) and loads the library and returns the object every kernel is
  called through, or None (disabled or unavailable). There is no module-level library: the CPU backend
  (shard.model.cpu_backend.CpuKernelBackend) loads it once when the runner is built and holds it.
- `ck_lora` (called by shard.lora.cpu_bgmv) adds every token's own adapter's B A x into y.
- `pack(w)` re-lays a float32 weight [N, K] as panels [ceil(N / PANEL), K, PANEL] (zero rows past N);
  `CpuKernels.packed_linear(x, wp, n, bias)` is F.linear on it for any number of rows (decode and
  prefill): the weights stream sequentially, which reads them near the machine's bandwidth; `unpack` and
  `packed_rows` give the torch paths the plain rows back. The CPU backend packs the model's linears at load
  into its own storage.
- `CpuKernels.linear(x, w, bias)` is F.linear for CPU float32 with M = x rows in 1..KERNEL_M (max_m); it
  returns None when the kernel does not apply (other device/dtype, strides, sizes) and the caller falls
  back to torch (`torch_linear`).
- The library (cpu_kernels.c, cpu_step.c and cpu_decode.c compiled as one unit) is built into
  ~/.cache/chameleon/kernels (or $CHAMELEON_KERNEL_CACHE) under a name keyed by the sources, flags,
  compiler version and CPU flags; written atomically, so concurrent processes
  (tensor-parallel ranks) can race safely.
- CHAMELEON_CPU_KERNELS=0 disables them (read by `load`, i.e. when a runner is built). A missing
  gcc, a CPU without AVX2/FMA or a failed compile logs a warning and leaves torch in charge.
- Threads: torch.get_num_threads(), from the library's own pool (not OpenMP: an OpenMP region ends in a
  barrier that waits for a descheduled thread, which on a busy 2-core machine stalled every matmul for a
  time slice; the pool's caller never waits for a worker that has not started). Its workers spin 0.2 ms
  after a job, then sleep. One caller at a time (a concurrent caller runs alone).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from shard.model.backend import torch_linear
from shard.model.cpu_step import StepKernels
from shard.model.cpu_step import declare as declare_step

log = logging.getLogger(__name__)

# one library: the matmul kernels and their thread pool, the step kernels (shard.model.cpu_step) and the
# fused decoder stack (shard.model.cpu_decode), which calls both
SOURCES = tuple(Path(__file__).with_name(n) for n in ("cpu_kernels.c", "cpu_step.c", "cpu_decode.c"))
FLAGS = ("-O3", "-march=native", "-pthread", "-shared", "-fPIC", "-std=c11")
KERNEL_M = 32  # up to this many rows the C kernel runs (30 layers + LM head of SmolLM2, cold weights, 2
               # cores: kernel vs MKL w @ x.T 40-50 vs 90-110 ms at M=8, 100-120 vs 130-140 ms at M=32)

PANEL = 8  # output rows per panel of a packed weight (cpu_kernels.c; checked against ck_panel at load)


def enabled() -> bool:
    """CHAMELEON_CPU_KERNELS unset or not in (0, false, no, off)."""
    return os.environ.get("CHAMELEON_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cache_dir() -> Path:
    env = os.environ.get("CHAMELEON_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "chameleon" / "kernels"


def build(cc: str = "gcc", sources: tuple[Path, ...] = ()) -> Path:
    """Compile (or find in the cache) one library from `sources` (SOURCES by default) as a single unit, so
    later files call the static functions of earlier ones; named after the first; raises
    RuntimeError/OSError on failure."""
    sources = sources or SOURCES
    gcc = shutil.which(cc)
    if gcc is None:
        raise RuntimeError(f"{cc} not found")
    flags = _cpu_flags().split()
    if "avx2" not in flags or "fma" not in flags:
        raise RuntimeError("CPU lacks AVX2/FMA")
    version = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=True).stdout
    unit = "".join(f'#line 1 "{p.name}"\n{p.read_text()}\n' for p in sources)
    key = hashlib.sha256("\0".join([unit, *FLAGS, version, " ".join(flags)]).encode())
    out = cache_dir() / f"{sources[0].stem}-{key.hexdigest()[:16]}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    src = Path(tmp).with_suffix(".c")
    try:
        src.write_text(unit)
        res = subprocess.run([gcc, *FLAGS, "-o", tmp, str(src)], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"compile failed: {res.stderr.strip()[:2000]}")
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, str(src)):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return out


def usable(t: torch.Tensor) -> bool:
    """A CPU float32 matrix with unit column stride (rows may be strided)."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 2 and t.stride(1) == 1


def pack(w: torch.Tensor) -> torch.Tensor:
    """[N, K] -> panels [ceil(N / PANEL), K, PANEL] (contiguous; rows past N are zero)."""
    n, k = w.shape
    p = -(-n // PANEL)
    padded = torch.zeros(p * PANEL, k, dtype=w.dtype, device=w.device)
    padded[:n] = w
    return padded.view(p, PANEL, k).transpose(1, 2).contiguous()


def unpack(wp: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of pack: the [n, K] rows (a copy)."""
    return wp.transpose(1, 2).reshape(-1, wp.shape[1])[:n]


def packed_rows(wp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows `ids` ([T] int64) of a packed weight: [T, K] (embedding lookup)."""
    return wp[ids // PANEL, :, ids % PANEL]


def can_pack(w: torch.Tensor) -> bool:
    """Whether packing `w` pays: a CPU float32 matrix (the caller holds the loaded kernels)."""
    return w.device.type == "cpu" and w.dtype == torch.float32 and w.dim() == 2


def _declare(lib: ctypes.CDLL) -> None:
    i64, i32, fp = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.ck_linear.argtypes = [fp, i64, fp, i64, fp, fp, i64, i32, i64, i64, i32, i32]
    lib.ck_linear.restype = i32
    lib.ck_lora.argtypes = [fp, i64, fp, i64, i32, fp, fp, fp, i64, i64, i64, i32]
    lib.ck_lora.restype = i32
    lib.ck_linear_packed.argtypes = [fp, i64, fp, fp, fp, i64, i32, i64, i64, i32, i32]
    lib.ck_linear_packed.restype = i32
    if lib.ck_panel() != PANEL:
        raise RuntimeError(f"library panels of {lib.ck_panel()} rows, this module packs {PANEL}")


class CpuKernels(StepKernels):
    """The loaded library (matmuls here, the step kernels of shard.model.cpu_step, the fused stack of
    shard.model.cpu_decode). Built by `load`; each method returns None (or False) when its kernel does not
    apply, and the caller keeps its torch path. Held by shard.model.cpu_backend.CpuKernelBackend."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    @classmethod
    def load(cls) -> CpuKernels | None:
        """The kernels, or None: disabled (CHAMELEON_CPU_KERNELS=0, read now), or unavailable (no gcc, no
        AVX2/FMA, a failed compile: logged as a warning)."""
        if not enabled():
            return None
        try:
            lib = ctypes.CDLL(str(build()))
            _declare(lib)
            declare_step(lib)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            log.warning("CPU kernels unavailable, using torch matmuls: %s", e)
            return None
        return cls(lib)

    def linear(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
               max_m: int = KERNEL_M) -> torch.Tensor | None:
        """x [M, K] @ w[N, K].T (+ bias) through the C kernel, or None when it does not apply (M > max_m,
        at most 256, included)."""
        if not (x.dim() == 2 and 1 <= x.shape[0] <= min(max_m, 256) and usable(x) and usable(w)
                and x.shape[1] == w.shape[1]
                and (bias is None or (usable(bias[None]) and bias.is_contiguous()))):
            return None
        if x.requires_grad or w.requires_grad:
            return None
        m, k = x.shape
        n = w.shape[0]
        y = torch.empty(m, n, dtype=torch.float32)
        rc = self.lib.ck_linear(x.data_ptr(), x.stride(0), w.data_ptr(), w.stride(0),
                                bias.data_ptr() if bias is not None else None, y.data_ptr(), n, m, n, k, 0,
                                torch.get_num_threads())
        return y if rc == 0 else None

    def packed_linear(self, x: torch.Tensor, wp: torch.Tensor, n: int,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [M, K] @ W.T (+ bias) for W packed in wp (its first n rows): through the C kernel when it
        applies, else torch on the unpacked rows (slow: a copy per call)."""
        if (x.dim() == 2 and x.shape[0] >= 1 and usable(x) and x.shape[1] == wp.shape[1]
                and wp.is_contiguous() and not x.requires_grad
                and (bias is None or (usable(bias[None]) and bias.is_contiguous()))):
            m, k = x.shape
            y = torch.empty(m, n, dtype=torch.float32)
            rc = self.lib.ck_linear_packed(x.data_ptr(), x.stride(0), wp.data_ptr(),
                                           bias.data_ptr() if bias is not None else None, y.data_ptr(), n, m,
                                           n, k, 0, torch.get_num_threads())
            if rc == 0:
                return y
        return torch.nn.functional.linear(x, unpack(wp, n), bias)

    def small_linear(self, x: torch.Tensor, w: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
        """F.linear, through the C kernel for small CPU float32 batches; else backend.torch_linear."""
        y = self.linear(x, w, bias) if x.dim() == 2 and x.device.type == "cpu" else None
        return y if y is not None else torch_linear(x, w, bias)

