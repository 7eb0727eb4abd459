"""Benchmark: one full training step (forward, backward, SGD step, enqueue) of the three trainings.

Cases: `phase1` (ikem6, separate InfoNCE, method.md §5.3), `phase2` (ikem6, cross-modal context +
IKEM, §5.4/§5.6) and `distill` (student6to3, §6.1), at the official N = 128, K = 32768 by default.
Providers:
  reference          skelfast.models.build(backend='reference'), eager (the baseline)
  skelfast           backend='skelfast' (fused ops), eager
  skelfast+compile   the same with every encoder torch.compile'd (run.compile of the trainer)
  skelfast+graphs    compile mode 'reduce-overhead' (CUDA graphs; GPU only)
  skelfast+bf16      bf16 autocast (GPU only unless --cpu-bf16)
Reports median/p20/p80 step time, samples/s, peak memory, the speed-up over `reference`, and the
projected time of the official 300-epoch NTU-60 xsub pretraining (313 steps/epoch: 150 epochs of
phase 1 + 150 of phase 2) or 150-epoch distillation.

Usage: python -m benchmarks.bench_step [--quick] [--device cuda] [--cases phase1,phase2,distill]
       [--providers reference,skelfast] [--N 128 --K 32768 --hidden-channels 16 --hidden-dim 256] [--reps 5]
"""
from __future__ import annotations

import argparse
import contextlib
import sys

import torch

from skelfast.models import build
from skelfast.train.loops import compile_encoders

from . import _harness as H

STEPS_PER_EPOCH = 313          # NTU-60 xsub: 40,091 training samples / 128, drop_last
EPOCHS = {"phase1": 150, "phase2": 150, "distill": 150}
ALL_PROVIDERS = ("reference", "skelfast", "skelfast+compile", "skelfast+graphs", "skelfast+bf16")


def make_step(case: str, provider: str, N: int, K: int, hidden_channels: int, device: torch.device, seed: int = 0,
              hidden_dim: int = 256):
    """A closure running one training step of `case` with `provider`; inputs built once."""
    torch.manual_seed(seed)
    backend = "reference" if provider == "reference" else "skelfast"
    kw = dict(queue_size=K, hidden_channels=hidden_channels, hidden_dim=hidden_dim)
    model = build("student6to3" if case == "distill" else "ikem6", backend=backend, **kw).to(device).train()
    compile_encoders(model, device, provider == "skelfast+compile", provider == "skelfast+graphs")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                          weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(N, 3, 50, 25, 2, generator=g).to(device)
    x2 = torch.randn(N, 3, 50, 25, 2, generator=g).to(device)
    frames = torch.randint(30, 301, (N,), generator=g).to(device)
    amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if provider == "skelfast+bf16"
           else contextlib.nullcontext())
    kwargs = {} if case == "distill" else {"phase": 1 if case == "phase1" else 2}

    def step():
        with amp:
            out = model(x1, x2, frames, **kwargs)      # enqueues in train mode
        opt.zero_grad(set_to_none=True)
        out["loss"].float().backward()
        opt.step()
        return out["loss"]
    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="N=16, K=1024, 4 channels, 32-d, 2 reps (smoke test)")
    ap.add_argument("--cases", default="phase1,phase2,distill")
    ap.add_argument("--providers", default=None, help=f"comma list from {ALL_PROVIDERS}")
    ap.add_argument("--N", type=int, default=128)
    ap.add_argument("--K", type=int, default=32768)
    ap.add_argument("--hidden-channels", type=int, default=16)
    ap.add_argument("--hidden-dim", type=int, default=256)
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 10 GPU, 3 CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--cpu-bf16", action="store_true", help="also time bf16 autocast on CPU")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory run (one extra step per row)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--out-dir", default=None, help="CSV folder (default benchmarks/results)")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quick:
        a.N, a.K, a.hidden_channels, a.hidden_dim = 16, 1024, 4, 32
    if a.providers:
        provs = a.providers.split(",")
    elif device.type == "cuda":
        provs = list(ALL_PROVIDERS)
    else:
        provs = ["reference", "skelfast"] + (["skelfast+bf16"] if a.cpu_bf16 else [])
    bad = [p for p in provs if p not in ALL_PROVIDERS]
    if bad:
        ap.error(f"unknown provider(s) {bad}; choose from {ALL_PROVIDERS}")
    if "skelfast+graphs" in provs and device.type != "cuda":
        provs.remove("skelfast+graphs")
    reps = a.reps or (2 if a.quick else (10 if device.type == "cuda" else 3))
    rows = []
    for case in a.cases.split(","):
        if case not in EPOCHS:
            ap.error(f"unknown case {case!r}; choose from {sorted(EPOCHS)}")
        ref_ms = None
        for prov in provs:
            step = make_step(case, prov, a.N, a.K, a.hidden_channels, device, hidden_dim=a.hidden_dim)
            st = H.measure(step, device, warmup=1 if device.type == "cpu" else 3, min_reps=reps,
                           min_time_s=0.0 if device.type == "cpu" else 1.0, max_reps=reps if device.type == "cpu" else 200)
            mem = float("nan") if a.no_memory else H.peak_memory_mb(step, device)
            if prov == "reference":
                ref_ms = st.p50
            proj_h = st.p50 * 1e-3 * STEPS_PER_EPOCH * EPOCHS[case] / 3600
            row = H.base_row("train_step", device)
            row.update(provider=prov, mode=case, shape=f"N={a.N},K={a.K},C={a.hidden_channels},H={a.hidden_dim}",
                       dtype="bf16" if prov.endswith("bf16") else "fp32", p50_ms=st.p50, p20_ms=st.p20,
                       p80_ms=st.p80, peak_mem_mb=mem, throughput=a.N / (st.p50 * 1e-3), throughput_unit="samples/s",
                       speedup_vs_reference=(ref_ms / st.p50) if ref_ms else "", projected_h=proj_h)
            rows.append(row)
            print(f"{case:8s} {prov:18s} {st.p50:10.1f} ms  {row['throughput']:8.1f} samples/s  "
                  f"{mem:8.1f} MiB  x{row['speedup_vs_reference'] or 1:.2f}  {EPOCHS[case]} ep -> {proj_h:.2f} h",
                  flush=True)
    print()
    H.print_table(rows, ["mode", "provider", "shape", "p50_ms", "p20_ms", "p80_ms", "throughput", "peak_mem_mb",
                         "speedup_vs_reference", "projected_h"])
    for prov in provs:
        p = [r for r in rows if r["provider"] == prov and r["mode"] in ("phase1", "phase2")]
        if len(p) == 2:
            print(f"projected official IKEM pretraining (150 + 150 epochs x {STEPS_PER_EPOCH} steps), {prov}: "
                  f"{sum(r['projected_h'] for r in p):.2f} h")
    if not a.no_write:
        print("results:", H.write_rows(rows, "bench_step", device, a.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
