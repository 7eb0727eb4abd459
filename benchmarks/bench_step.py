"""Benchmark B8: one full training step (forward, backward, SGD step, enqueue) of the three trainings.

Both backends run the step as `python -m skelfast.train` does: the forward does not enqueue (so the
model uses its queue buffers in place instead of copying them, 100-200 MB per step at K = 32768),
the keys (teacher queries and t for distillation) are enqueued after the optimiser step.

Cases: `phase1` (ikem6, separate InfoNCE, method.md §5.3), `phase2` (ikem6, cross-modal context +
IKEM, §5.4/§5.6) and `distill` (student6to3, §6.1), at the official N = 128, K = 32768 by default;
`finetune` (linear6 with every weight trained, view 'all': six encoders and their 60-class heads,
cross entropy; skelfast/configs/finetune.yaml, 100 epochs; K is unused).
Providers:
  reference          skelfast.models.build(backend='reference'), eager (the baseline)
  reference+compile  the same with every encoder torch.compile'd (skelfast.train.loops.compile_encoders,
                     what the trainer's --compile does): the torch.compile baseline
  skelfast           backend='skelfast' (fused ops, batched encoders), eager
  skelfast+compile   the same with its encoders torch.compile'd
  skelfast+graphs    compile mode 'reduce-overhead' (CUDA graphs; GPU only)
  skelfast+bf16      bf16 autocast (GPU only unless --cpu-bf16)
Default: all providers on GPU; on CPU reference, reference+compile, skelfast, skelfast+compile (+
skelfast+bf16 with --cpu-bf16). --quick on CPU leaves the two compile providers out: compiling the
step's encoders with a cold inductor cache took up to 110 s per case and provider on the 2-core box
(about 4.5 min for all six, with other jobs running; a few seconds each once the cache is warm),
more than the whole quick suite's 3-minute budget; quick rows therefore have no
speedup_vs_compile. --providers overrides (e.g. --quick --providers
reference,reference+compile,skelfast,skelfast+compile).

Correctness before timing: both backends initialise identically for the same seed, so the first
step's loss of every provider must match the reference's first-step loss: relative error < 1e-3
for fp32 providers and < 2e-2 for bf16 autocast (stated tolerances; the measured error is printed).
The same first step's update of every floating-point state-dict entry (parameters after SGD, BN
running statistics, queues after the enqueue; both backends share the reference's state-dict
layout) must match the reference's too, relative L2 < 5e-2 per tensor (floored at 1% of a typical
update: exactly-zero gradients are rounding noise), so that a wrong backward cannot pass on a
right forward; fp32 providers only (bf16 autocast updates differ by design).
A provider that misses, or fails to run, gets no number: it is reported, the other providers still
run and the benchmark exits with status 1. The reference's first step is always run for this,
even when `reference` is not timed. That checked first step runs with dropout switched off: the
backends draw their dropout masks differently (torch's bernoulli_ vs skelfast's counter-based
mask), which alone moves the first loss by up to ~8e-4 at p = 0.5. The timed steps run with the
encoders' dropout `--dropout` (default 0.5, the official value; on CPU dropout's bernoulli_ is a
real part of the eager step).

Columns: median/p20/p80 step time, throughput = samples/s, peak memory (skelfast+graphs: plus the
graphs' private pools, step_peak_mb), speedup_vs_reference,
speedup_vs_compile (over reference+compile), tflops = achieved TFLOP/s at the step's nominal FLOPs
(step_flops), floor_us = those FLOPs / the GEMM rate measured in this run for the provider's compute
dtype (fp32, bf16 for skelfast+bf16), pct_of_floor = floor / median, and the projected time of the
official 300-epoch NTU-60 xsub pretraining (150 epochs of phase 1 + 150 of phase 2), 150-epoch
distillation or 100-epoch fine-tuning, at the run's batch size N (40,091 // N steps per epoch: 313
at the official N = 128).

Usage: python -m benchmarks.bench_step [--quick] [--device cuda] [--cases phase1,phase2,distill,finetune]
       [--providers reference,skelfast] [--N 128 --K 32768 --hidden-channels 16 --hidden-dim 256] [--reps 5]
"""
from __future__ import annotations

import contextlib
import sys

import torch

from skelfast.models import build
from skelfast.train.loops import compile_encoders

from . import _harness as H
from .bench_encoder import M, encoder_forward_flops
from .bench_losses import gemm_flops

TRAIN_SAMPLES = 40091          # NTU-60 xsub training samples; an epoch is TRAIN_SAMPLES // N steps (drop_last)
EPOCHS = {"phase1": 150, "phase2": 150, "distill": 150, "finetune": 100}
ALL_PROVIDERS = ("reference", "reference+compile", "skelfast", "skelfast+compile", "skelfast+graphs", "skelfast+bf16")
CPU_PROVIDERS = ("reference", "reference+compile", "skelfast", "skelfast+compile")
QUICK_CPU_PROVIDERS = ("reference", "skelfast")     # no compile in --quick (module docstring)
G, S, FEATURE_DIM = 6, 3, 128                       # modalities, students, feature dim of ikem6 / student6to3
LOSS_RTOL = {"fp32": 1e-3, "bf16": 2e-2}            # first-step loss vs the reference's
NUM_CLASS = 60                                      # NTU-60 heads of the finetune case


def step_flops(case: str, N: int, K: int, hidden_channels: int, hidden_dim: int) -> float:
    """Nominal FLOPs of one training step: encoders (performance.md §4 counting, backward = 2x
    forward) plus the loss GEMMs (bench_losses.gemm_flops). Modalities, EMA, enqueue and SGD are
    memory-bound terms below 1% of this at the official sizes and are left out."""
    def encoder(head_dims):
        return encoder_forward_flops(N * M, hidden_channels=hidden_channels, hidden_dim=hidden_dim,
                                     head_dims=head_dims)
    wide = G * FEATURE_DIM                                    # 768-d student / IKEM features
    if case == "finetune":                                    # 6 encoders with linear heads, fwd+bwd
        return 3 * G * encoder((hidden_dim, NUM_CLASS))
    if case == "distill":                                     # 6 teachers fwd + 3 students fwd+bwd
        encoders = G * encoder((hidden_dim, hidden_dim, FEATURE_DIM)) + 3 * S * encoder((hidden_dim, wide, wide))
    else:                                                     # 6 query encoders fwd+bwd + 6 key encoders fwd
        encoders = (3 + 1) * G * encoder((hidden_dim, hidden_dim, FEATURE_DIM))
        if case == "phase2":                                  # six IKEM mlp2x heads hidden -> 768 -> 768, fwd+bwd
            encoders += 3 * G * 2 * N * (hidden_dim * wide + wide * wide)
    return encoders + gemm_flops(case, K, n=N, d=FEATURE_DIM)


UPDATE_TOL = 5e-2   # first-step state update vs the reference's, per tensor (fp32 providers; as bench_encoder's GRAD_TOL)


def float_state(model: torch.nn.Module) -> dict:
    """Detached copies of the floating-point entries of model.state_dict() (reference layout)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor) and v.is_floating_point()}


def checked_first_step(step) -> tuple:
    """Run step once with dropout off -> (loss, {state-dict key: change of that entry})."""
    before = float_state(step.model)
    with dropout_off(step.model):
        loss = step()
    after = float_state(step.model)
    if set(after) != set(before):
        raise AssertionError(f"the state-dict keys changed during the step: {sorted(set(after) ^ set(before))[:5]}")
    return loss, {k: after[k] - before[k] for k in before}


def check_update(name: str, got: dict, want: dict) -> float:
    """The first step's state update of a provider vs the reference's (UPDATE_TOL)."""
    if set(got) != set(want):
        raise AssertionError(f"provider {name!r}: state-dict keys differ from the reference's: "
                             f"{sorted(set(got) ^ set(want))[:5]}")
    keys = sorted(want)
    return H.check_rel_l2_floored(name, [got[k] for k in keys], [want[k] for k in keys], UPDATE_TOL, labels=keys,
                                  what="first-step update of")


@contextlib.contextmanager
def dropout_off(model: torch.nn.Module):
    """Every nn.Dropout of `model` at p = 0 inside the block (both backends read the module's p)."""
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    saved = [m.p for m in drops]
    for m in drops:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in zip(drops, saved):
            m.p = p


def make_step(case: str, provider: str, N: int, K: int, hidden_channels: int, device: torch.device, seed: int = 0,
              hidden_dim: int = 256, dropout: float = 0.5):
    """A closure running one training step of `case` with `provider`; inputs built once. The model
    is `step.model` (for dropout_off)."""
    torch.manual_seed(seed)
    backend = "reference" if provider.startswith("reference") else "skelfast"
    kw = dict(hidden_channels=hidden_channels, hidden_dim=hidden_dim, dropout=dropout)
    if case == "finetune":   # as skelfast.train.models.build_linear(train_backbone=True)
        model = build("linear6", backend=backend, backbone_eval=False, num_class=NUM_CLASS, **kw)
        model.requires_grad_(True)
    else:
        model = build("student6to3" if case == "distill" else "ikem6", backend=backend, queue_size=K, **kw)
    model = model.to(device).train()
    compile_encoders(model, device, provider.endswith("+compile"), provider == "skelfast+graphs")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                          weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(N, 3, 50, 25, 2, generator=g).to(device)
    x2 = torch.randn(N, 3, 50, 25, 2, generator=g).to(device)
    frames = torch.randint(30, 301, (N,), generator=g).to(device)
    amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if provider == "skelfast+bf16"
           else contextlib.nullcontext())
    if case == "finetune":
        labels = torch.randint(0, NUM_CLASS, (N,), generator=g).to(device)

        def step():
            # as the trainer (train/finetune.py): logits of view 'all', cross entropy, backward, SGD
            with amp:
                logits = model(x1, frames)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
    else:
        kwargs = {} if case == "distill" else {"phase": 1 if case == "phase1" else 2}

        def step():
            # as the trainer (train/pretrain.py, train/distill.py): forward without enqueue (the
            # model then reads its queues in place, no snapshot copy), backward, SGD, enqueue
            with amp:
                out = model(x1, x2, frames, enqueue=False, **kwargs)
            opt.zero_grad(set_to_none=True)
            out["loss"].float().backward()
            opt.step()
            model.enqueue_(out["teacher_q" if case == "distill" else "k"].float())
            return out["loss"].detach()
    step.model = model
    return step


def precision(provider: str) -> str:
    return "bf16" if provider.endswith("bf16") else "fp32"


def step_peak_mb(provider: str, step, device: torch.device) -> float:
    """Peak MiB one step allocates; for CUDA graphs plus the graphs' private pools, which hold the
    captured steps' buffers (a replay allocates nothing, so the call alone measures about 0)."""
    peak = H.peak_memory_mb(step, device)
    if provider.endswith("+graphs") and device.type == "cuda":
        peak += H.cuda_graph_pool_mb(device)
    return peak


def run_case(case: str, provs, a, device: torch.device, reps: int, failures: list):
    """Check every provider's first-step loss against the reference's, then time it; one row each.
    A provider that fails or misses the check gets no row; the failure is appended to `failures`."""
    queue = "" if case == "finetune" else f"K={a.K},"
    shape = f"N={a.N},{queue}C={a.hidden_channels},H={a.hidden_dim},p={a.dropout:g}"
    make = lambda prov: make_step(case, prov, a.N, a.K, a.hidden_channels, device,  # noqa: E731
                                  hidden_dim=a.hidden_dim, dropout=a.dropout)
    ref_step = make("reference")
    ref_loss, ref_update = checked_first_step(ref_step)   # the anchor (also the reference's warm-up step)
    ref_loss = ref_loss.double()
    if "reference" not in provs:
        del ref_step
    flops = step_flops(case, a.N, a.K, a.hidden_channels, a.hidden_dim)
    steps = {}
    for prov in provs:
        if prov == "reference":
            steps[prov] = ref_step
            continue
        tol = LOSS_RTOL[precision(prov)]                # first step: the check (and compilation)
        H.release_free_memory()                         # the check from a trimmed heap (CPU)
        try:
            step = make(prov)
            loss, update = checked_first_step(step)
            err = H.check_rel_l2(prov, loss, ref_loss, tol)[0]
            upd = check_update(prov, update, ref_update) if precision(prov) == "fp32" else None
            del update
        except (AssertionError, RuntimeError) as exc:   # no number; the other providers still run
            failures.append(f"{case} {prov}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            print(f"{case:8s} {prov:18s} NO NUMBER: {failures[-1]}", flush=True)
            continue
        upd_msg = f"; state update rel. error {upd:.1e} < {UPDATE_TOL:g}" if upd is not None else ""
        print(f"{case:8s} {prov:18s} first-step loss {ref_loss.item():.6f}: rel. error {err:.1e} < {tol:g}{upd_msg}")
        steps[prov] = step
    del ref_update                                      # not held while the providers are timed
    cpu = device.type == "cpu"
    # H.measure_interleaved: in turns on GPU (machine drift lands on every provider alike)
    stats = H.measure_interleaved(steps, device, warmup=(0 if a.quick else 1) if cpu else 3, min_reps=reps,
                                  min_time_s=0.0 if cpu else 1.0, max_reps=reps if cpu else 200) if steps else {}
    results = {prov: (stats[prov], None if a.no_memory else step_peak_mb(prov, step, device))
               for prov, step in steps.items()}
    ref, comp = results.get("reference"), results.get("reference+compile")
    rows = []
    for prov, (st, mem) in results.items():
        row = H.timed_row("train_step", device, prov, case, shape, precision(prov), st, mem,
                          reference_ms=ref and ref[0].p50, compile_ms=comp and comp[0].p50, flops=flops,
                          floor_dtype=torch.bfloat16 if precision(prov) == "bf16" else torch.float32,
                          throughput=(a.N / (st.p50 * 1e-3), "samples/s"),
                          projected_h=st.p50 * 1e-3 * (TRAIN_SAMPLES // a.N) * EPOCHS[case] / 3600)
        rows.append(row)
        speedups = "".join(f"  x{row[k]:.2f} vs {k[11:]}" for k in ("speedup_vs_reference", "speedup_vs_compile")
                           if k in row)
        print(f"{case:8s} {prov:18s} {st.p50:10.1f} ms  {row['throughput']:8.1f} samples/s  "
              f"{'' if mem is None else f'{mem:8.1f} MiB'}{speedups}  {row['tflops']:.3f} TFLOP/s  "
              f"{row['pct_of_floor']:.1f}% of floor  {EPOCHS[case]} ep -> {row['projected_h']:.2f} h", flush=True)
    return rows


def main(argv=None) -> int:
    ap = H.bench_parser(__doc__, "N=16, K=1024, 4 channels, 32-d, 2 reps, no compile providers on CPU (smoke test)")
    ap.add_argument("--cases", type=H.names_from(sorted(EPOCHS)), default=["phase1", "phase2", "distill"],
                    help=f"comma list from {sorted(EPOCHS)} (default phase1,phase2,distill)")
    ap.add_argument("--providers", type=H.names_from(ALL_PROVIDERS), default=None,
                    help=f"comma list from {ALL_PROVIDERS}")
    # sizes default to None: --quick fills in only the ones not given
    ap.add_argument("--N", type=H.positive_int, default=None, help="batch (default 128; --quick 16)")
    ap.add_argument("--K", type=H.positive_int, default=None, help="queue size (default 32768; --quick 1024)")
    ap.add_argument("--hidden-channels", type=H.positive_int, default=None, help="default 16; --quick 4")
    ap.add_argument("--hidden-dim", type=H.positive_int, default=None, help="default 256; --quick 32")
    ap.add_argument("--dropout", type=float, default=0.5, help="encoder dropout of the timed steps (official 0.5)")
    ap.add_argument("--reps", type=H.positive_int, default=None,
                    help="timed repetitions (default 10 GPU, 3 CPU; --quick 2)")
    ap.add_argument("--threads", type=H.positive_int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--cpu-bf16", action="store_true", help="also time bf16 autocast on CPU")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory run (one extra step per row)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    if not 0 <= a.dropout < 1:
        ap.error(f"--dropout must be in [0, 1), got {a.dropout}")
    for key, full, quick in (("N", 128, 16), ("K", 32768, 1024), ("hidden_channels", 16, 4), ("hidden_dim", 256, 32)):
        if getattr(a, key) is None:
            setattr(a, key, quick if a.quick else full)
    if a.providers:
        provs = list(a.providers)
        if "skelfast+graphs" in provs and device.type != "cuda":
            ap.error("skelfast+graphs (CUDA graphs) needs --device cuda")
    elif device.type == "cuda":
        provs = list(ALL_PROVIDERS)
    else:
        provs = list(QUICK_CPU_PROVIDERS if a.quick else CPU_PROVIDERS) + (["skelfast+bf16"] if a.cpu_bf16 else [])
    if "skelfast+graphs" in provs and device.type != "cuda":
        provs.remove("skelfast+graphs")
    cases = a.cases
    reps = a.reps or (2 if a.quick else (10 if device.type == "cuda" else 3))
    print(f"providers {provs}")
    print(H.ceilings_line(device, sorted({torch.bfloat16 if precision(p) == "bf16" else torch.float32 for p in provs},
                                         key=str)), flush=True)
    failures, rows, path = [], [], None
    for case in cases:   # written case by case: a run stopped by a time limit keeps the finished cases
        H.fresh_compile_cache()
        case_rows = run_case(case, provs, a, device, reps, failures)
        rows += case_rows
        if not a.no_write and case_rows:
            path = H.write_rows(case_rows, "bench_step", device, a.out_dir)
    print()
    H.print_table(rows, ["mode", "provider", "shape", "p50_ms", "p20_ms", "p80_ms", "throughput", "peak_mem_mb",
                         "speedup_vs_reference", "speedup_vs_compile", "tflops", "pct_of_floor", "projected_h"])
    for prov in provs if not a.quick else ():   # a projection from --quick's toy model would mislead
        p = [r for r in rows if r["provider"] == prov and r["mode"] in ("phase1", "phase2")]
        if len(p) == 2:
            print(f"projected official IKEM pretraining (150 + 150 epochs x {TRAIN_SAMPLES // a.N} steps), {prov}: "
                  f"{sum(r['projected_h'] for r in p):.2f} h")
    if path:
        print("results:", path)
    if failures:
        print("providers without a number (failed, or first-step loss off the reference's):", *failures, sep="\n  ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
