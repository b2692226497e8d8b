"""`chameleon bench-shard`: decode and prefill tokens/s of the shard on the demo model.

One run measures, on the same batch shape: base model only; every request on its own adapter (mixed
ranks); the same multi-adapter workload through transformers + PEFT (`generate` with `adapter_names`);
and the memory-bandwidth floor of one decode step (this rank's weight bytes / read bandwidth) against our
decode step at batch `--floor-batch`: the bandwidth is sampled (a sum over 512 MB) right before every one
of those steps, and the ratio is the median over steps of step / floor, so that both sides of each ratio
see the same machine state (the report also gives it against the best of 5 reads taken at the start).
On CPU float32 the base and multi-adapter decode runs are repeated with the C kernels off
(CHAMELEON_CPU_KERNELS=0, the torch path) on a second shard built in the same process with them off
(weights in torch's layout), so both paths are compared on the same machine state. Bandwidth physics: a
decode step must read the base weights plus every adapter of the batch once, so if decode is
bandwidth-bound the multi-adapter / base throughput ratio cannot exceed weights / (weights + adapter
bytes); the report prints that ceiling and the multi-adapter step against its own floor ((weights +
adapter bytes) / bandwidth). Decode figures use the median step (robust to other load on the machine),
and the base-only and multi-adapter batches decode side by side, one step of each in turn, so that load
which comes and goes hits both alike; prefill is one timed step. The shard runs in-process through its
generate.v3 servicer (batching, sampling and detokenization included; no socket).
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from chameleon.tools.cliargs import EnvArgumentParser
from chameleon.tools.logs import setup_logging

if TYPE_CHECKING:
    import torch

    from shard.model.runner import ModelRunner
    from shard.server.servicer import TextGenerationService

FILLER = ("The quick brown fox jumps over the lazy dog while the shard serves many adapters at once. " * 64)


def prompt_text(i: int, tokens: int) -> str:
    """A distinct prompt per request, long enough for `tokens` tokens (truncated to them)."""
    text = FILLER * (1 + tokens // 200)
    return text[i % 50:i % 50 + 8 * tokens + 16]


@dataclass(frozen=True, slots=True)
class RunResult:
    name: str
    requests: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    decode_step_ms: float
    steps_ms: tuple[float, ...] = ()           # every decode step (round order)
    bandwidth_bytes_per_s: tuple[float, ...] = ()  # a read-bandwidth sample taken right before each step


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="chameleon bench-shard", description=__doc__)
    p.add_argument("--model-dir", type=Path, default=Path("assets/demo/model"), help="base model folder")
    p.add_argument("--adapter-dir", type=Path, default=Path("assets/demo/adapters"),
                   help="folder of PEFT adapters (<id>/ subfolders)")
    p.add_argument("--requests", type=int, default=32, help="requests per batch (one adapter each)")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt tokens per request")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per request")
    p.add_argument("--floor-batch", type=int, default=8, help="batch size of the decode step compared "
                   "with the bandwidth floor")
    p.add_argument("--memory-budget", type=int, default=6 * 1024**3, help="shard memory budget (bytes, CPU)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights dtype")
    p.add_argument("--adapter-dtype", choices=("auto", "model"), default="auto", help="adapter storage in "
                   "the pool, as `chameleon shard --adapter-dtype`: 'auto' keeps 16-bit adapter files in 16 "
                   "bits under a float32 model (lossless), 'model' converts them to the model dtype")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--skip-peft", action="store_true", help="do not run the transformers + PEFT baseline")
    p.add_argument("--skip-torch-path", action="store_true",
                   help="do not repeat the decode runs with the C CPU kernels off")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--kernel-backend", choices=("auto", "torch", "cpu-kernels", "triton"), default="auto",
                   help="as `chameleon shard --kernel-backend` ('triton' on CPU needs TRITON_INTERPRET=1)")
    return p


def pick_adapters(adapter_dir: Path, n: int) -> list[str]:
    """n adapters, round-robin over their ranks so every rank is represented."""
    by_rank: dict[int, list[str]] = {}
    for d in sorted(p for p in adapter_dir.iterdir() if (p / "adapter_config.json").is_file()):
        by_rank.setdefault(int(json.loads((d / "adapter_config.json").read_text())["r"]), []).append(d.name)
    if sum(map(len, by_rank.values())) < n:
        raise SystemExit(f"bench-shard: {adapter_dir} has fewer than {n} adapters")
    out: list[str] = []
    while len(out) < n:
        for r in sorted(by_rank):
            if by_rank[r] and len(out) < n:
                out.append(by_rank[r].pop(0))
    return out


class BandwidthProbe:
    """Read bandwidth of the device: the time of summing a buffer far larger than the caches (one call = one
    sample; on CUDA the buffer is in device memory, 1 GiB, and the sum is synchronised: HBM bandwidth)."""

    def __init__(self, nbytes: int = 512 * 1024**2, device: str | torch.device = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        self.nbytes = 1024**3 if self.device.type == "cuda" else nbytes
        self.buf = torch.ones(self.nbytes // 4, dtype=torch.float32, device=self.device)

    def __call__(self) -> float:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        float(self.buf.sum())  # the host read synchronises
        return self.nbytes / (time.perf_counter() - t0)

    def best(self, repeats: int = 5) -> float:
        return max(self() for _ in range(repeats))


def _requests(n: int, args: SimpleNamespace, adapters: Sequence[str | None], first_page: int,
              block_size: int, first_id: int = 0) -> list:
    from chameleon_pb import generate_pb2

    per = -(-(args.prompt_tokens + args.new_tokens) // block_size)
    out = []
    for i in range(n):
        r = generate_pb2.Request(id=first_id + i, inputs=prompt_text(i, args.prompt_tokens),
                                 truncate=args.prompt_tokens,
                                 blocks=range(first_page + i * per, first_page + (i + 1) * per))
        r.stopping_parameters.max_new_tokens = args.new_tokens
        r.stopping_parameters.ignore_eos_token = True
        if adapters[i] is not None:
            r.adapter_id = adapters[i]
        out.append(r)
    return out


def run_shard(service: TextGenerationService, args: SimpleNamespace, name: str,
              adapters: Sequence[str | None],
              block_size: int, probe: BandwidthProbe | None = None) -> RunResult:
    """One workload: prefill, then decode to the end (run_pair with a single batch)."""
    return run_pair(service, args, [(name, adapters)], block_size, probe)[0]


def run_pair(service: TextGenerationService, args: SimpleNamespace,
             runs: Sequence[tuple[str, Sequence[str | None]]],
             block_size: int, probe: BandwidthProbe | None = None) -> list[RunResult]:
    """Several workloads prefilled one after the other, then decoded step by step in turn (one Decode of
    each batch per round), so that every workload's median step sees the same machine state: on a
    shared machine, load that comes and goes no longer lands on one workload only. With a probe, a
    bandwidth sample is taken right before every step (RunResult.bandwidth_bytes_per_s)."""
    from chameleon_pb import generate_pb2

    per = -(-(args.prompt_tokens + args.new_tokens) // block_size)
    batches, prefill_s, first_page, first_id = [], [], 1, 0
    for k, (_name, adapters) in enumerate(runs):
        reqs = _requests(len(adapters), args, adapters, first_page, block_size, first_id)
        first_page, first_id = first_page + len(adapters) * per, first_id + len(adapters)
        t0 = time.perf_counter()
        batch = generate_pb2.Batch(id=k + 1, requests=reqs)
        reply = service.Prefill(generate_pb2.PrefillRequest(batch=batch), None)
        prefill_s.append(time.perf_counter() - t0)
        batches.append(reply.batch if reply.HasField("batch") else None)
    steps: list[list[float]] = [[] for _ in runs]
    bandwidth: list[list[float]] = [[] for _ in runs]
    while any(b is not None for b in batches):
        for k, batch in enumerate(batches):
            if batch is None:
                continue
            if probe is not None:
                bandwidth[k].append(probe())
            t0 = time.perf_counter()
            reply = service.Decode(generate_pb2.DecodeRequest(batches=[batch]), None)
            steps[k].append(time.perf_counter() - t0)
            batches[k] = reply.batch if reply.HasField("batch") else None
    out = []
    for (name, adapters), pre, st, bw in zip(runs, prefill_s, steps, bandwidth, strict=True):
        n, step = len(adapters), statistics.median(st)
        out.append(RunResult(name, n, n * args.prompt_tokens / pre, n / step, 1000 * step,
                             tuple(1000 * t for t in st), tuple(bw)))
    return out


class StepClock:
    """A transformers StoppingCriteria that only timestamps every generation step."""

    def __init__(self, cuda_sync: bool = False) -> None:
        self.stamps: list[float] = []
        self.cuda_sync = cuda_sync

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> bool:
        if self.cuda_sync:
            import torch

            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return False


def run_peft(args: SimpleNamespace, names: Sequence[str]) -> RunResult:
    """The same requests through transformers + PEFT `generate(adapter_names=...)`, greedy."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM, StoppingCriteriaList

    tok = AutoTokenizer.from_pretrained(str(args.model_dir))
    base = LlamaForCausalLM.from_pretrained(str(args.model_dir), dtype=getattr(torch, args.dtype))
    model = PeftModel.from_pretrained(base, str(args.adapter_dir / names[0]), adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(str(args.adapter_dir / n), adapter_name=n)
    model.eval()
    ids = torch.tensor([tok(prompt_text(i, args.prompt_tokens), add_special_tokens=False)["input_ids"]
                        [-args.prompt_tokens:]
                        for i in range(len(names))])
    kw = dict(attention_mask=torch.ones_like(ids), adapter_names=list(names), do_sample=False,
              pad_token_id=tok.pad_token_id or 0)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, ids = model.to(device), ids.to(device)
    clock_sync = device.type == "cuda"
    with torch.inference_mode():
        model.generate(ids[:2, :4], **{**kw, "attention_mask": torch.ones_like(ids[:2, :4]),
                                       "adapter_names": list(names[:2])}, max_new_tokens=2)
        clock = StepClock(clock_sync)
        t0 = time.perf_counter()
        model.generate(ids, **kw, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                       stopping_criteria=StoppingCriteriaList([clock]))
    prefill_s = clock.stamps[0] - t0
    step = statistics.median(b - a for a, b in itertools.pairwise(clock.stamps))
    n = len(names)
    return RunResult("transformers+peft", n, n * args.prompt_tokens / prefill_s, n / step, 1000 * step)


def build_service(args: SimpleNamespace, names: Sequence[str]) -> tuple[object, object]:
    """In-process shard sized exactly for the benchmark (KV for every request + the adapters)."""
    from chameleon_pb import generate_pb2

    from shard.cli import build_core
    from shard.server.headroom import DeviceMemory
    from shard.server.servicer import TextGenerationService

    core = build_core(SimpleNamespace(
        model_dir=args.model_dir, uds_path="bench", lora_adapters="", adapter_dir=args.adapter_dir,
        memory_budget=args.memory_budget, adapter_pages=None, memory_fraction=0.9, dtype=args.dtype,
        device=args.device, block_size=16, threads=args.threads, adapter_dtype=args.adapter_dtype,
        kernel_backend=getattr(args, "kernel_backend", "auto")))
    runner = core.runner
    adapter_pages = sum(runner.adapter_store.pages_needed(args.adapter_dir / n) for n in names)
    # base-only and multi-adapter batches are decoded side by side (run_pair): KV for both
    kv_pages = 2 * len(names) * -(-(args.prompt_tokens + args.new_tokens) // runner.block_size) + 2
    prefill = len(names) * args.prompt_tokens
    want = (kv_pages + adapter_pages) * runner.page_bytes + runner.measure_activation_bytes(prefill)
    if runner.device.type == "cpu":
        budget = runner.weight_bytes + want + 2 * runner.page_bytes
        memory = DeviceMemory(runner.device, min(budget, args.memory_budget))
        core.options = replace(core.options, memory=memory)
    else:  # CUDA: a pool of the same size, not 90% of the device (transformers+PEFT runs after it)
        import torch

        free = torch.cuda.mem_get_info(runner.device)[0]
        core.options = replace(core.options, memory_fraction=min(0.9, (want + 4 * runner.page_bytes) / free))
    core.options = replace(core.options, adapter_pages=adapter_pages)
    service = TextGenerationService(core)
    service.Warmup(generate_pb2.WarmupRequest(max_prefill_tokens=prefill), None)
    core.adapter_manager.ensure_resident(list(names), set(), set())
    return core, service


def kernels_active(runner: ModelRunner) -> bool:
    """Whether the C CPU kernels serve this runner (CPU float32, compiled, not disabled)."""
    import torch

    return runner.backend.name == "cpu-kernels" and runner.dtype == torch.float32


def run_decodes(service: TextGenerationService, args: SimpleNamespace, names: Sequence[str], bs: int,
                probe: BandwidthProbe,
                suffix: str = "") -> tuple[RunResult, RunResult, RunResult]:
    """(base at --floor-batch, with a bandwidth sample before each step; base at --requests; every request
    on its own adapter); the last two are decoded side by side (run_pair), so their ratio compares steps
    taken under the same conditions."""
    at_floor = run_shard(service, args, f"base batch {args.floor_batch}{suffix}", [None] * args.floor_batch,
                         bs, probe)
    base, multi = run_pair(service, args, [(f"base only{suffix}", [None] * args.requests),
                                           (f"{args.requests} adapters{suffix}", names)], bs)
    return at_floor, base, multi


def torch_path_runs(args: SimpleNamespace, names: Sequence[str],
                    probe: BandwidthProbe) -> tuple[RunResult, RunResult, RunResult]:
    """The same runs with the C kernels off (CHAMELEON_CPU_KERNELS=0, read when a runner is built), on a
    shard built with them off (the torch backend; weights in torch's layout); env restored after."""
    old = os.environ.get("CHAMELEON_CPU_KERNELS")
    os.environ["CHAMELEON_CPU_KERNELS"] = "0"
    try:
        core, service = build_service(args, names)
        bs = core.runner.block_size
        run_shard(service, replace_args(args, new_tokens=3), "warm-up", [None, names[0]], bs)
        return run_decodes(service, args, names, bs, probe, " (torch)")
    finally:
        if old is None:
            del os.environ["CHAMELEON_CPU_KERNELS"]
        else:
            os.environ["CHAMELEON_CPU_KERNELS"] = old


def kv_read_bytes(runner: ModelRunner, args: SimpleNamespace, batch: int) -> int:
    """K/V bytes one decode step of `batch` rows reads on this rank, at the run's mean context length."""
    mean_ctx = args.prompt_tokens + args.new_tokens // 2
    return batch * mean_ctx * runner.page_bytes // runner.block_size


def floor_ratio(weight_bytes: int, run: RunResult) -> float:
    """Median over steps of step / floor, each floor from the bandwidth sample taken right before it."""
    return statistics.median(ms / (1000 * weight_bytes / bw)
                             for ms, bw in zip(run.steps_ms, run.bandwidth_bytes_per_s, strict=True))


def physics(weight_bytes: int, adapter_bytes: int, bandwidth: float, base: RunResult,
            multi: RunResult) -> dict:
    """Bandwidth-bound ceiling of multi/base and the multi step against its own floor."""
    ceiling = weight_bytes / (weight_bytes + adapter_bytes)
    ratio = multi.decode_tokens_per_s / base.decode_tokens_per_s
    multi_floor_ms = 1000 * (weight_bytes + adapter_bytes) / bandwidth
    return {"adapter_bytes_per_step": adapter_bytes, "multi_vs_base_ceiling": ceiling,
            "multi_vs_base_of_ceiling": ratio / ceiling, "multi_floor_step_ms": multi_floor_ms,
            "multi_floor_ratio": multi.decode_step_ms / multi_floor_ms}


def run_all(args: SimpleNamespace) -> dict:
    names = pick_adapters(args.adapter_dir, args.requests)
    core, service = build_service(args, names)
    bs = core.runner.block_size
    run_shard(service, replace_args(args, new_tokens=3), "warm-up", [None, names[0]], bs)
    probe = BandwidthProbe(device=core.runner.device)
    best_bandwidth = probe.best()
    kernels = kernels_active(core.runner)
    at_floor, base, multi = run_decodes(service, args, names, bs, probe)
    weight_bytes = core.runner.weight_bytes
    kv_bytes = kv_read_bytes(core.runner, args, args.floor_batch)
    device, backend = str(core.runner.device), core.runner.backend.name
    graphs = core.runner.graphs is not None
    bandwidth = statistics.median(at_floor.bandwidth_bytes_per_s)
    floor_ms = 1000 * (weight_bytes + kv_bytes) / bandwidth  # a decode step reads the weights and the KV
    # every adapter of the batch is read once per decode step (this rank's slice)
    adapter_bytes = sum(core.runner.adapter_store.info(n).nbytes for n in set(names))
    adapter_dtypes = sorted({core.runner.adapter_store.info(n).dtype for n in set(names)})
    del service, core
    gc.collect()
    _release_cuda()
    torch_runs = torch_path_runs(args, names, probe) if kernels and not args.skip_torch_path else None
    gc.collect()
    peft = None if args.skip_peft else run_peft(args, names)
    ranks = sorted({_rank(args.adapter_dir / n) for n in names})
    out = {"model": str(args.model_dir), "requests": args.requests, "prompt_tokens": args.prompt_tokens,
           "new_tokens": args.new_tokens, "adapter_ranks": ranks, "adapter_dtypes": adapter_dtypes,
           "device": device, "backend": backend, "cuda_graphs": graphs, "kv_bytes_per_step": kv_bytes,
           "weight_bytes": weight_bytes, "floor_step_ms": floor_ms, "floor_batch": asdict(at_floor),
           "floor_ratio": floor_ratio(weight_bytes + kv_bytes, at_floor), "base": asdict(base),
           "multi": asdict(multi),
           "multi_vs_base_decode": multi.decode_tokens_per_s / base.decode_tokens_per_s,
           "bandwidth_bytes_per_s": bandwidth, "best_bandwidth_bytes_per_s": best_bandwidth,
           "floor_ratio_best_bandwidth": at_floor.decode_step_ms / (1000 * (weight_bytes + kv_bytes)
                                                                    / best_bandwidth),
           "cpu_kernels": kernels,
           **physics(weight_bytes, adapter_bytes, bandwidth, base, multi)}
    if torch_runs is not None:
        t_floor, t_base, t_multi = torch_runs
        out["torch_path"] = {"floor_batch": asdict(t_floor), "base": asdict(t_base), "multi": asdict(t_multi),
                             "floor_ratio": floor_ratio(weight_bytes + kv_bytes, t_floor),
                             "multi_vs_base_decode": t_multi.decode_tokens_per_s / t_base.decode_tokens_per_s,
                             **physics(weight_bytes, adapter_bytes, bandwidth, t_base, t_multi)}
    if peft is not None:
        out["peft"] = asdict(peft)
        out["multi_vs_peft_decode"] = multi.decode_tokens_per_s / peft.decode_tokens_per_s
        out["multi_vs_peft_prefill"] = multi.prefill_tokens_per_s / peft.prefill_tokens_per_s
    return out


def _release_cuda() -> None:
    """Hand the freed shard's device memory back before transformers+PEFT loads (CUDA only)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rank(path: Path) -> int:
    return int(json.loads((path / "adapter_config.json").read_text())["r"])


def replace_args(args: SimpleNamespace, **kw: object) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(args), **kw})


def format_report(r: dict) -> str:
    tp = r.get("torch_path")
    rows = [r["base"], r["multi"], *([r["peft"]] if "peft" in r else []), r["floor_batch"],
            *([tp["base"], tp["multi"], tp["floor_batch"]] if tp else [])]
    lines = [f"model {r['model']}: {r['requests']} requests x {r['prompt_tokens']} prompt tokens, "
             f"{r['new_tokens']} new tokens; adapter ranks {r['adapter_ranks']}",
             f"{'workload':<24}{'prefill tok/s':>15}{'decode tok/s':>15}{'decode step ms':>16}"]
    lines += [f"{x['name']:<24}{x['prefill_tokens_per_s']:>15.1f}{x['decode_tokens_per_s']:>15.1f}"
              f"{x['decode_step_ms']:>16.1f}" for x in rows]
    lines.append(f"multi-adapter / base decode: {r['multi_vs_base_decode']:.2f}x (target >= 0.7x)")
    if "peft" in r:
        lines.append(f"multi-adapter / transformers+PEFT: decode {r['multi_vs_peft_decode']:.2f}x "
                     f"(target >= 3x), prefill {r['multi_vs_peft_prefill']:.2f}x")
    at = r["floor_batch"]
    kv = r.get("kv_bytes_per_step", 0)
    lines.append(f"device {r.get('device', 'cpu')}, backend {r.get('backend', '?')}, decode CUDA graphs "
                 f"{'on' if r.get('cuda_graphs') else 'off'}")
    lines.append(f"bandwidth floor {r['floor_step_ms']:.1f} ms/step ({r['weight_bytes'] / 1e6:.0f} MB of "
                 f"weights + {kv / 1e6:.0f} MB of KV at {r['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, the "
                 "median of a read before each "
                 f"step); our batch-{at['requests']} step {at['decode_step_ms']:.1f} ms; median step / floor "
                 f"{r['floor_ratio']:.2f}x (target <= 1.5x)")
    best = r["best_bandwidth_bytes_per_s"] / 1e9
    lines.append(f"  against the best of 5 reads at the start ({best:.1f} GB/s): "
                 f"{r['floor_ratio_best_bandwidth']:.2f}x")
    if "adapter_bytes_per_step" in r:
        stored = f" ({', '.join(r['adapter_dtypes'])})" if r.get("adapter_dtypes") else ""
        lines.append(f"adapters read per multi-adapter step: {r['adapter_bytes_per_step'] / 1e6:.0f} MB"
                     f"{stored}; "
                     f"bandwidth-bound ceiling of multi/base = weights / (weights + adapters) = "
                     f"{r['multi_vs_base_ceiling']:.2f}x; ours {r['multi_vs_base_decode']:.2f}x = "
                     f"{r['multi_vs_base_of_ceiling']:.2f} of the ceiling")
        lines.append(f"multi-adapter floor {r['multi_floor_step_ms']:.1f} ms/step "
                     f"({(r['weight_bytes'] + r['adapter_bytes_per_step']) / 1e6:.0f} MB at "
                     f"{r['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s); our step "
                     f"{r['multi']['decode_step_ms']:.1f} ms = {r['multi_floor_ratio']:.2f}x floor")
    if tp:
        lines.append(f"C CPU kernels {'on' if r['cpu_kernels'] else 'off'}; torch path "
                     f"(CHAMELEON_CPU_KERNELS=0, same run): batch-{tp['floor_batch']['requests']} step "
                     f"{tp['floor_batch']['decode_step_ms']:.1f} ms = {tp['floor_ratio']:.2f}x floor, "
                     f"multi/base {tp['multi_vs_base_decode']:.2f}x ({tp['multi_vs_base_of_ceiling']:.2f} of "
                     f"the ceiling), multi step {tp['multi_floor_ratio']:.2f}x its floor")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    from shard.cli import openmp_waits_passively

    openmp_waits_passively()  # first: before anything imports torch
    parser = build_parser()
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = SimpleNamespace(**vars(parser.parse_args(list(argv))))
    setup_logging(level="WARNING", process="bench-shard")
    if not (args.model_dir / "config.json").is_file() or not args.adapter_dir.is_dir():
        print(f"bench-shard: no model at {args.model_dir} or no adapters at {args.adapter_dir}; build them "
              "with `chameleon demo-assets assets/demo`", file=sys.stderr)
        return 2
    if min(args.requests, args.prompt_tokens, args.floor_batch) < 1 or args.new_tokens < 2:
        print("bench-shard: --requests, --prompt-tokens, --floor-batch >= 1 and --new-tokens >= 2",
              file=sys.stderr)
        return 2
    result = run_all(args)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0
