"""`fake_cuda()`: run shard code on "cuda:0" tensors on a CPU-only machine, failing on any op that mixes
devices the way a real CUDA run would.

Why not FakeTensorMode alone. torch's FakeTensorMode holds the rule we want (FakeTensor's device
propagation: every tensor argument of an op on one device, a CPU zero-dim tensor allowed as a scalar,
CPU index tensors allowed in indexing, copies across devices allowed), and it can make fake CUDA tensors
without CUDA. It cannot run the shard's step on a CPU-only build of torch, for two reasons:
- Python indexing (`x[i]`, `x[rows] = v`) opens a CUDA device guard in C++ before any mode sees the op,
  and a CPU-only build has none (`torch._C._ensureCUDADeviceGuardSet` stands one in only for CUDA builds
  without a device): "PyTorch is not linked with support for cuda devices". The model, the LoRA path and
  the sampler all index.
- fake tensors have no values: `.tolist()`, `int(t)`, `unique`, `bincount` and the sampler's choices
  raise DataDependentOutputException; with a ShapeEnv, `.item()` gives an unbacked SymInt and the first
  `int()` of it (the step needs one to pick a token and detokenize it) raises
  GuardOnDataDependentSymNode.

The narrowest honest workaround, here: every "CUDA" tensor is a `FakeCudaTensor`, a wrapper subclass
that reports device cuda:0 and holds a real CPU tensor. `FakeCudaMode` (a TorchDispatchMode) takes
every aten op that involves such a tensor, a CUDA device argument or a torch.Generator, and
1. runs the op in a FakeTensorMode on fake twins of its arguments (same shapes and dtypes, each on the
   device it claims), so torch's own device rule accepts or rejects the op (FakeTensorDeviceMismatchError
   and the op-specific checks of fake_impls); where the fake kernel cannot run because the op's output
   depends on data (unique, bincount, item, nonzero, a boolean mask index), FakeTensor's general rule
   (_find_common_device) applies, and indexing keeps its input's device;
2. checks that a torch.Generator handed to the op is on the op's device (CUDA kernels refuse a CPU
   generator; FakeTensor does not model generators);
3. runs the op for real on the CPU tensors and labels each output with the device the fake run gave it.
Indexing is translated into aten ops (select, slice, unsqueeze, index, index_put_) in Python, as torch's
C++ indexing would issue them, so the same rule checks it (and `Tensor.copy_`, whose binding opens a
guard too, is called as its aten op, as is `~t`). Ops that touch no CUDA tensor run untouched
(file reading, host-side bookkeeping). `torch.cuda._lazy_init` is a no-op inside `fake_cuda()` (no CUDA
runtime exists here to initialise). A violation raises `DeviceMixError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

CUDA = torch.device("cuda:0")
aten = torch.ops.aten
HOST_READS = {torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__bool__, torch.Tensor.__index__,
              torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__repr__, torch.Tensor.__format__}
GUARDED = {torch.Tensor.copy_: aten.copy_.default, torch.Tensor.__invert__: aten.bitwise_not.default}
NO_GUARD = "is not linked with support for cuda devices"
NO_FAKE_VALUES = (DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException)


class DeviceMixError(RuntimeError):
    """An op mixed devices (or generator and tensor devices) the way a CUDA kernel refuses."""


class FakeCudaTensor(torch.Tensor):
    """Reports device cuda:0; `elem` holds its real data on the CPU. Lives only inside FakeCudaMode."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, device: torch.device = CUDA) -> FakeCudaTensor:
        t = torch.Tensor._make_wrapper_subclass(cls, elem.size(), strides=elem.stride(),
                                                storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                device=device, requires_grad=elem.requires_grad)
        t.elem = elem
        return t

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.__getitem__:
            return get_item(*args)
        if func is torch.Tensor.__setitem__:
            return set_item(*args)
        if func in GUARDED:  # their Python bindings open a device guard too: call the aten op
            return GUARDED[func](*args, **kwargs)
        if func in HOST_READS:  # a device-to-host read (a sync on CUDA): no device rule applies
            return func(*[a.elem if isinstance(a, FakeCudaTensor) else a for a in args], **kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        raise RuntimeError(f"{func}: a fake CUDA tensor used outside fake_cuda()")


def _common_device(func: Any, tensors: list[torch.Tensor]) -> torch.device:
    """The device rule where the fake kernel cannot run: indexing keeps its input's device (index
    tensors may live on the CPU), every other op needs one device (FakeTensor's general rule)."""
    if func is aten.index.Tensor:
        return tensors[0].device
    return FakeTensor._find_common_device(func, tensors)[0]


def _is_cuda_device(a: object) -> bool:
    return isinstance(a, torch.device) and a.type == "cuda"


class FakeCudaMode(TorchDispatchMode):
    """See the module docstring. `checked` counts the ops that went through the device rule."""

    def __init__(self) -> None:
        super().__init__()
        self.fake = FakeTensorMode(allow_non_fake_inputs=False)
        self.checked = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        flat, spec = tree_flatten((args, kwargs or {}))
        if not any(isinstance(a, (FakeCudaTensor, torch.Generator)) or _is_cuda_device(a) for a in flat):
            return func(*args, **(kwargs or {}))
        self.checked += 1
        devices = self._check(func, flat, spec)
        real = [a.elem if isinstance(a, FakeCudaTensor) else torch.device("cpu") if _is_cuda_device(a)
                else a for a in flat]
        rargs, rkwargs = tree_unflatten(real, spec)
        out = func(*rargs, **rkwargs)
        return self._label(out, devices, flat)

    def _twin(self, a: object) -> object:
        if not isinstance(a, torch.Tensor):
            return a
        meta = torch.empty_strided(a.size(), a.stride(), dtype=a.dtype, device="meta")
        return self.fake.fake_tensor_converter.from_meta_and_device(self.fake, meta, a.device)

    def _check(self, func: Any, flat: list, spec: Any) -> list[torch.device] | torch.device:
        """The device of each output (a list), or one device for every output; raises DeviceMixError."""
        twins = [self._twin(a) for a in flat]
        fargs, fkwargs = tree_unflatten(twins, spec)
        tensors = [t for t in twins if isinstance(t, torch.Tensor)]
        try:
            try:
                with self.fake:
                    fout = func(*fargs, **fkwargs)
                result: list[torch.device] | torch.device = [
                    o.device if isinstance(o, torch.Tensor) else CUDA for o in tree_flatten(fout)[0]]
            except NO_FAKE_VALUES:
                result = _common_device(func, tensors)
            except RuntimeError as exc:
                if NO_GUARD not in str(exc):
                    raise
                result = _common_device(func, tensors)  # the fake kernel itself indexed (a bool mask)
        except RuntimeError as exc:  # FakeTensorDeviceMismatchError, fake_impls' device checks
            if "device" not in str(exc).lower():
                raise
            raise DeviceMixError(f"{func} mixes devices: {exc}") from exc
        self._check_generators(func, flat, tensors)
        return result

    @staticmethod
    def _check_generators(func: Any, flat: list, tensors: list[torch.Tensor]) -> None:
        kinds = {t.device.type for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
        kinds |= {a.type for a in flat if isinstance(a, torch.device)}
        for g in (a for a in flat if isinstance(a, torch.Generator)):
            if kinds and kinds != {g.device.type}:
                raise DeviceMixError(f"{func}: a {g.device.type} generator drives {sorted(kinds)} tensors")

    @staticmethod
    def _label(out: Any, devices: list[torch.device] | torch.device, flat: list) -> Any:
        outs, spec = tree_flatten(out)
        if isinstance(devices, torch.device):
            devices = [devices] * len(outs)
        same = {id(a.elem): a for a in flat if isinstance(a, FakeCudaTensor)}  # in-place ops return self
        labelled = []
        for o, dev in zip(outs, devices, strict=False):
            if isinstance(o, torch.Tensor) and id(o) in same:
                o = same[id(o)]
            elif isinstance(o, torch.Tensor) and dev.type == "cuda":
                o = FakeCudaTensor(o, dev)
            labelled.append(o)
        return tree_unflatten(labelled + outs[len(labelled):], spec)


def _index_parts(t: torch.Tensor, index: Any) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Python indexing of t as torch's C++ does it: (the view after ints, slices, None and Ellipsis;
    the advanced index tensors per remaining dim, [] when there are none). Lists become CPU tensors."""
    items = list(index) if isinstance(index, tuple) else [index]
    items = [torch.tensor(i) if isinstance(i, list) else i for i in items]
    used = sum(i.dim() if isinstance(i, torch.Tensor) and i.dtype == torch.bool else
               0 if i is None or i is Ellipsis else 1 for i in items)
    view, dim, advanced = t, 0, {}
    for i in items:
        if i is Ellipsis:
            dim += t.dim() - used
        elif i is None:
            view, dim = view.unsqueeze(dim), dim + 1
        elif isinstance(i, slice):
            view = aten.slice.Tensor(view, dim, i.start, i.stop, 1 if i.step is None else i.step)
            dim += 1
        elif isinstance(i, torch.Tensor):
            advanced[dim] = i
            dim += i.dim() if i.dtype == torch.bool else 1
        else:
            view = view.select(dim, int(i))
    return view, [advanced.get(d) for d in range(max(advanced) + 1)] if advanced else []


def get_item(t: torch.Tensor, index: Any) -> torch.Tensor:
    view, indices = _index_parts(t, index)
    return aten.index.Tensor(view, indices) if indices else view


def set_item(t: torch.Tensor, index: Any, value: Any) -> None:
    view, indices = _index_parts(t, index)
    if not indices:
        if isinstance(value, torch.Tensor):
            view.copy_(value)
        else:
            view.fill_(value)
        return
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(value, dtype=t.dtype)  # a zero-dim host scalar, as torch makes one
    aten.index_put_.default(view, indices, value)


@contextlib.contextmanager
def fake_cuda() -> Iterator[FakeCudaMode]:
    """Inside: `device="cuda:0"` makes FakeCudaTensors and every op is checked (see the module doc)."""
    lazy_init, lift = torch.cuda._lazy_init, torch._C._only_lift_cpu_tensors()
    torch.cuda._lazy_init = lambda: None
    torch._C._set_only_lift_cpu_tensors(True)  # torch.tensor(data, device=...) builds on the host first
    try:
        with FakeCudaMode() as mode:
            yield mode
    finally:
        torch.cuda._lazy_init = lazy_init
        torch._C._set_only_lift_cpu_tensors(lift)


def host(t: torch.Tensor) -> torch.Tensor:
    """The real CPU data of a fake CUDA tensor (a plain tensor as is)."""
    return t.elem if isinstance(t, FakeCudaTensor) else t
