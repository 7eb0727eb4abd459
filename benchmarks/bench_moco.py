"""Benchmarks B6/B7: momentum update of the key encoders and queue enqueue (method.md §5.1, §9.3-9.5).

B6 providers, all updating the key encoders of G full-size encoders (920,068 parameters, 108
tensors each) in place with theta_k <- m theta_k + (1-m) theta_q:
  official-loop   the official per-parameter Python loop with new allocations (§9.3)
  loop+compile    torch.compile of that loop
  skelfast        skelfast.reference.moco.momentum_update_ (one _foreach_mul_ + _foreach_add_)
  foreach-lerp    torch._foreach_lerp_ (one fused multi-tensor kernel)
B7 providers: enqueue of (G, N, D) keys into (G, D, K) queues with a host-side int pointer, with and
without the official per-step `queue.clone()` snapshot (§9.4), and with the official tensor pointer
read by int() (a device sync on GPU, §9.5).
Every row has the speed-up over the official code (`official-loop`, `official (clone + tensor ptr)`),
achieved GB/s and % of the memory floor at the copy bandwidth measured in the same run, for the
minimal traffic of the operation: B6 reads key and query parameters and writes the keys; B7 reads
the keys and writes their queue columns (the clone is overhead the floor does not include). B6 also
has the speed-up over `loop+compile`; B7 has no compile provider (nothing to fuse in one copy).
Usage: python -m benchmarks.bench_moco [--quick] [--device cuda]
"""
from __future__ import annotations

import sys

import torch

from skelfast.reference.moco import enqueue_, momentum_update_
from skelfast.reference.stgcn import STGCN

from . import _harness as H

M_MOMENTUM = 0.999


def official_loop(keys, queries, m=M_MOMENTUM):
    for pk, pq in zip(keys, queries):
        pk.data = pk.data * m + pq.data * (1.0 - m)


def foreach_lerp(keys, queries, m=M_MOMENTUM):
    torch._foreach_lerp_(keys, queries, 1.0 - m)


def encoder_params(G: int, device: torch.device):
    encs = [STGCN(head="mlp").to(device) for _ in range(2 * G)]
    keys = [p.data for e in encs[:G] for p in e.parameters()]
    queries = [p.data for e in encs[G:] for p in e.parameters()]
    return keys, queries


def bench_momentum(G: int, device: torch.device, quick: bool):
    keys, queries = encoder_params(G, device)
    n_params = sum(k.numel() for k in keys)
    bytes_moved = 3 * 4 * n_params  # read key, read query, write key
    H.fresh_compile_cache()
    compiled = H.compile_static(official_loop)
    providers = {"official-loop": lambda: official_loop(keys, queries),
                 "loop+compile": lambda: compiled(keys, queries),
                 "skelfast": lambda: momentum_update_(keys, queries, M_MOMENTUM),
                 "foreach-lerp": lambda: foreach_lerp(keys, queries)}
    # correctness: one update from the same start must agree across providers
    start = [k.clone() for k in keys]
    want = None
    for name, fn in providers.items():
        for k, s in zip(keys, start):
            k.copy_(s)
        fn()
        got = torch.cat([k.flatten() for k in keys])
        if want is None:
            want = got.clone()
        H.check_close(name, got, want, atol=1e-6, rtol=1e-6)
    stats = {}
    for name, fn in providers.items():
        stats[name] = (H.measure(fn, device, min_time_s=0.2 if quick else 1.0, min_reps=5 if quick else 20),
                       H.peak_memory_mb(fn, device))
    shape = f"G={G},params={n_params},tensors={len(keys)}"
    return [H.timed_row("momentum_update", device, name, "update", shape, "float32", s, peak,
                        reference_ms=stats["official-loop"][0].p50, compile_ms=stats["loop+compile"][0].p50,
                        bytes_moved=bytes_moved)
            for name, (s, peak) in stats.items()]


def bench_enqueue(G: int, N: int, K: int, D: int, device: torch.device, quick: bool):
    queue = torch.nn.functional.normalize(torch.randn(G, D, K, device=device), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(G, N, D, device=device), dim=2)
    state = {"ptr": 0, "tptr": torch.zeros(1, dtype=torch.long, device=device)}

    def host_ptr():
        state["ptr"] = enqueue_(queue, keys, state["ptr"])

    def host_ptr_clone():
        queue.clone()  # the official per-step snapshot before the loss
        state["ptr"] = enqueue_(queue, keys, state["ptr"])

    def tensor_ptr_clone():
        queue.clone()
        ptr = int(state["tptr"])  # official: int(self.queue_ptr) syncs the device
        queue[..., ptr:ptr + N] = keys.transpose(-1, -2)
        state["tptr"][0] = (ptr + N) % K

    providers = {"official (clone + tensor ptr)": tensor_ptr_clone, "clone + host ptr": host_ptr_clone,
                 "skelfast (host ptr, no clone)": host_ptr}
    stats = {name: (H.measure(fn, device, min_time_s=0.2 if quick else 1.0, min_reps=5 if quick else 20),
                    H.peak_memory_mb(fn, device)) for name, fn in providers.items()}
    base = stats["official (clone + tensor ptr)"][0].p50
    bytes_moved = 2 * 4 * G * N * D  # read the keys, write their queue columns
    return [H.timed_row("enqueue", device, name, "step", f"G={G},N={N},K={K},D={D}", "float32", s, peak,
                        reference_ms=base, bytes_moved=bytes_moved)
            for name, (s, peak) in stats.items()]


def main(argv=None):
    parser = H.bench_parser(__doc__, "G=1 momentum update, small queue")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(H.ceilings_line(device))
    rows = bench_momentum(1 if args.quick else 6, device, args.quick)
    rows += bench_enqueue(6, 128, 4096 if args.quick else 32768, 128, device, args.quick)
    H.print_table(rows, ["op", "provider", "shape", "p50_ms", "p20_ms", "p80_ms", "speedup_vs_reference",
                         "speedup_vs_compile", "gbs", "pct_of_floor", "floor_us", "peak_mem_mb"])
    print(f"wrote {H.write_rows(rows, 'moco', device, args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
