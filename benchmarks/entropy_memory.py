"""Peak memory of chunked vs naive log-prob + full-vocabulary entropy, forward AND backward.

Starting from final hidden states (N = batch x seq positions, H) and an LM-head
weight (V x H), both methods compute per position the log-prob of a target
token and the full-vocabulary entropy, then backpropagate
``loss = sum(logp) + sum(entropy)`` to the hidden states and the weight:

* naive: ``logits = hidden @ W.T``, ``log_softmax``, gather, ``-sum(exp(logp) * logp)``,
  plain autograd (:func:`warmstart.scoring.naive_logp_entropy`);
* chunked: :func:`warmstart.scoring.chunked_logp_entropy` (chunks of positions,
  logits recomputed in backward).

Memory method: every measurement runs in a fresh Python subprocess, one at a
time. After the inputs are built and a small warm-up has loaded the math
libraries, the process resets its kernel peak-RSS mark (``echo 5 >
/proc/self/clear_refs``) and records its current RSS; after forward + backward
it reads the peak (``VmHWM``). Reported: peak minus that baseline, i.e. the
memory the method adds over its inputs (gradients included). Where clear_refs
is unavailable, ``ru_maxrss`` differences are used instead (said in the JSON).

The naive method at the full size needs more memory than a 24 GiB machine has
(measured here: ~2.9 MB per position, ~5x the logits' 0.6 MB, i.e. ~23 GiB at
N = 8192), so it is measured at N/8 and N/4, then at the largest of N or N/2
predicted to fit in the memory available at that moment; its peak at N is
either measured or read off the least-squares line through the measured points
(naive memory is linear in N: every big tensor is N x V). The JSON says which.

Differences between the methods are measured on the largest naive run's
inputs, and each method is compared with a float64 computation at every
position (the naive float32 entropy ``-sum(exp(logp) * logp)`` carries its own
rounding error of ~1e-5 at V = 152k, which shows up in the naive-vs-chunked
difference).

Usage:
    python benchmarks/entropy_memory.py            # V=151936, H=1024, T=4096, B=2 (~8 min on 2 cores)
    python benchmarks/entropy_memory.py --quick    # V=151936, H=256, T=1024, B=2, chunks 256,64 (< 90 s)
    python benchmarks/entropy_memory.py --small    # V=32768, H=256, T=512, B=2 (seconds)
Prints one JSON object on stdout.

``--quick`` gives the full run's verdicts at 1/16 of its arithmetic. It keeps what each
verdict depends on:

* the vocabulary, V = 151,936: the naive float32 entropy's own error (what makes
  ``meets_diff_target`` false) comes from summing V terms, and the naive memory per
  position is a multiple of V;
* the logits' distribution: W's scale goes as 1/sqrt(H) (0.05 at H = 1024), so logits
  have the same spread (std ~1.6) at any H;
* the memory ratio's two terms, in the same proportions: chunked memory is
  ~(chunk x V) buffers + the V x H weight gradient, naive memory ~N x V, so
  chunked/naive depends on chunk/N and H/N, both kept (chunk 256 = N/8 as 1024 is at
  N = 8192; H/N = 1/8 both).

N = 2,048 here, so the naive peak at N is measured (5.8 GiB), not extrapolated, and the
float64 comparison covers all N positions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GIB = 1024**3


# ---------------------------------------------------------------------------
# Memory reading (Linux)
# ---------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMeter:
    """Peak RSS added over the RSS at ``start()``."""

    def start(self) -> None:
        self.method = "VmHWM after clear_refs reset, minus VmRSS at reset"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the process's peak-RSS mark to its current RSS
            self.base_kib = _status_kib("VmRSS")
            if self.base_kib is None or _status_kib("VmHWM") is None:
                raise OSError("no /proc/self/status")
            self.use_proc = True
        except OSError:
            # ru_maxrss cannot be reset: the peak before start() hides anything below it.
            self.method = "ru_maxrss after minus ru_maxrss before (no reset available)"
            self.base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.use_proc = False

    def added_bytes(self) -> int:
        peak_kib = (
            _status_kib("VmHWM") if self.use_proc else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        )
        return (peak_kib - self.base_kib) * 1024


# ---------------------------------------------------------------------------
# Worker: one measurement in this (fresh) process
# ---------------------------------------------------------------------------


def _inputs(n_pos: int, hidden: int, vocab: int, seed: int):
    """Deterministic inputs: unit-scale hidden states (post-RMSNorm-like), W ~ N(0, (0.05 sqrt(1024 / H))^2).

    The 1/sqrt(H) scale gives logits of the same spread at every H (std ~1.6); it is
    exactly 0.05 at the full run's H = 1024.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    hidden_NH = torch.randn(n_pos, hidden, generator=g)
    weight_VH = torch.randn(vocab, hidden, generator=g) * (0.05 * (1024 / hidden) ** 0.5)
    targets_N = torch.randint(0, vocab, (n_pos,), generator=g)
    return hidden_NH, weight_VH, targets_N


def _run_method(method: str, hidden_NH, weight_VH, targets_N, chunk_size: int):
    """Forward + backward of loss = sum(logp) + sum(entropy); returns values and gradients."""
    from warmstart.scoring import chunked_logp_entropy, naive_logp_entropy

    h = hidden_NH.detach().requires_grad_(True)
    w = weight_VH.detach().requires_grad_(True)
    if method == "naive":
        logp_N, entropy_N = naive_logp_entropy(h, w, targets_N)
    else:
        logp_N, entropy_N = chunked_logp_entropy(h, w, targets_N, chunk_size=chunk_size)
    (logp_N.sum() + entropy_N.sum()).backward()
    return logp_N.detach(), entropy_N.detach(), h.grad, w.grad


def _float64_reference(hidden_NH, weight_VH, targets_N, row_chunk=256):
    """logp, entropy, grad_hidden and grad_weight of the same loss in float64, at every position.

    Row chunks keep the float64 logits small; W and grad_W are held in float64 (2 x V x H x 8 bytes).
    """
    import torch

    w64_VH = weight_VH.double()
    n_pos = hidden_NH.shape[0]
    logp_N = torch.empty(n_pos, dtype=torch.float64)
    entropy_N = torch.empty(n_pos, dtype=torch.float64)
    grad_h_NH = torch.empty(hidden_NH.shape, dtype=torch.float64)
    grad_w_VH = torch.zeros_like(w64_VH)
    for s in range(0, n_pos, row_chunk):
        e = min(s + row_chunk, n_pos)
        h64_CH = hidden_NH[s:e].double()
        logq_CV = torch.log_softmax(h64_CH @ w64_VH.T, -1)
        p_CV = logq_CV.exp()
        logp_N[s:e] = logq_CV.gather(1, targets_N[s:e, None]).squeeze(1)
        entropy_N[s:e] = -(p_CV * logq_CV).sum(-1)
        # d(logp + H)/dz = onehot - p - p (log p + H)
        g_z_CV = -p_CV * (1 + logq_CV + entropy_N[s:e, None])
        g_z_CV[torch.arange(e - s), targets_N[s:e]] += 1
        grad_h_NH[s:e] = g_z_CV @ w64_VH
        grad_w_VH.addmm_(g_z_CV.T, h64_CH)
    return logp_N, entropy_N, grad_h_NH, grad_w_VH


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    hidden_NH, weight_VH, targets_N = _inputs(args.n_pos, args.hidden, args.vocab, args.seed)
    # Warm-up on a few positions: loads BLAS / allocator state so the baseline holds them.
    _run_method(args.worker, hidden_NH[:8], weight_VH, targets_N[:8], args.chunk_size)
    meter = PeakMeter()
    meter.start()
    t0 = time.perf_counter()
    logp_N, entropy_N, grad_h, grad_w = _run_method(
        args.worker, hidden_NH, weight_VH, targets_N, args.chunk_size
    )
    seconds = time.perf_counter() - t0
    out = {
        "method": args.worker,
        "n_positions": args.n_pos,
        "chunk_size": args.chunk_size if args.worker == "chunked" else None,
        "added_bytes": meter.added_bytes(),
        "memory_method": meter.method,
        "seconds": round(seconds, 2),
    }
    if args.compare:
        # Differences, after the measurement: naive results are held, chunked is run on the same inputs.
        other = _run_method("chunked", hidden_NH, weight_VH, targets_N, args.chunk_size)
        mine = (logp_N, entropy_N, grad_h, grad_w)
        names = ("logp", "entropy", "grad_hidden", "grad_weight")
        out["max_abs_diff"] = {n: float((a - b).abs().max()) for n, a, b in zip(names, mine, other)}
        out["max_abs_value"] = {n: float(a.abs().max()) for n, a in zip(names, mine)}
        ref = _float64_reference(hidden_NH, weight_VH, targets_N)
        out["max_abs_err_vs_float64"] = {
            method: {n: float((v.double() - r).abs().max()) for n, v, r in zip(names, vals, ref)}
            for method, vals in (("naive", mine), ("chunked", other))
        }
    return out


# ---------------------------------------------------------------------------
# Driver: one subprocess per measurement, never two at once
# ---------------------------------------------------------------------------


def _spawn(args, method: str, n_pos: int, chunk_size: int, compare: bool = False) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        method,
        "--n-pos",
        str(n_pos),
        "--hidden",
        str(args.hidden),
        "--vocab",
        str(args.vocab),
        "--chunk-size",
        str(chunk_size),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    if compare:
        cmd.append("--compare")
    print(f"[entropy_memory] {method} N={n_pos} chunk={chunk_size} ...", file=sys.stderr, flush=True)
    # A fixed glibc mmap threshold: every allocation >= 128 KiB is its own mapping, returned to
    # the OS when freed, so RSS follows live tensors (the default threshold adapts upward to
    # 32 MiB, and freed heap memory below it lingers in RSS as noise of ~0.1 GiB).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"worker {method} N={n_pos} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    result = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        f"[entropy_memory]   -> {result['added_bytes'] / GIB:.2f} GiB, {result['seconds']} s", file=sys.stderr
    )
    return result


def _fit_line(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares bytes = a + b * N."""
    n = len(points)
    if n == 1:
        return 0.0, points[0][1] / points[0][0]
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, b


def driver(args) -> dict:
    import psutil

    n_full = args.batch * args.seq
    logits_bytes = n_full * args.vocab * 4
    chunk_sizes = [int(c) for c in args.chunk_sizes.split(",")]

    chunked = {}
    for c in chunk_sizes:
        chunked[c] = _spawn(args, "chunked", n_full, c)

    # Naive: N/8 and N/4 give the line; then the largest of N, N/2 predicted to fit in the
    # memory available now is measured too, with the comparison run after its measurement.
    naive_points: list[tuple[int, int]] = []
    for frac in (8, 4):
        res = _spawn(args, "naive", n_full // frac, chunk_sizes[0])
        naive_points.append((n_full // frac, res["added_bytes"]))
    a, b = _fit_line(naive_points)
    largest = n_full // 4
    for frac in (1, 2):
        predicted = a + b * (n_full // frac)
        available = psutil.virtual_memory().available
        # Leave room for the inputs, the interpreter and other users of the machine.
        if predicted + 2 * GIB <= available * 0.9:
            largest = n_full // frac
            break
        print(
            f"[entropy_memory] naive N={n_full // frac} not run: predicted {predicted / GIB:.1f} GiB "
            f"+ 2 GiB > 90% of {available / GIB:.1f} GiB available",
            file=sys.stderr,
        )
    compare = _spawn(args, "naive", largest, chunk_sizes[0], compare=True)
    if largest not in dict(naive_points):
        naive_points.append((largest, compare["added_bytes"]))
    a, b = _fit_line(naive_points)
    naive_full_measured = largest == n_full
    naive_full_bytes = naive_points[-1][1] if naive_full_measured else a + b * n_full

    primary = chunked[chunk_sizes[0]]
    diffs = compare["max_abs_diff"]
    return {
        "benchmark": "entropy_memory",
        "what": "logp of target + full-vocabulary entropy from hidden states, forward + backward "
        "(loss = sum logp + sum entropy, grads to hidden and weight), float32",
        "shape": {
            "vocab": args.vocab,
            "hidden": args.hidden,
            "seq": args.seq,
            "batch": args.batch,
            "N": n_full,
        },
        "size": "quick" if args.quick else "small" if args.small else "full",
        "threads": args.threads,
        "memory_method": primary["memory_method"]
        + "; one fresh subprocess per measurement (MALLOC_MMAP_THRESHOLD_=131072), run one at a time; "
        "bytes added over the inputs (hidden, weight) and include the float32 grad of the weight",
        "full_logits_GiB": round(logits_bytes / GIB, 3),
        "inputs_GiB": round((n_full * args.hidden + args.vocab * args.hidden) * 4 / GIB, 3),
        "chunked_added_GiB": {str(c): round(r["added_bytes"] / GIB, 3) for c, r in chunked.items()},
        "chunked_seconds": {str(c): r["seconds"] for c, r in chunked.items()},
        "naive_measured_added_GiB": {str(n): round(v / GIB, 3) for n, v in naive_points},
        "naive_full_added_GiB": round(naive_full_bytes / GIB, 3),
        "naive_full_is": "measured"
        if naive_full_measured
        else "extrapolated (least squares over the measured N)",
        "naive_bytes_per_position": round(b),
        "naive_intercept_GiB": round(a / GIB, 3),
        "chunked_over_naive": {
            str(c): round(r["added_bytes"] / naive_full_bytes, 4) for c, r in chunked.items()
        },
        "target_chunked_over_naive": 0.125,
        "meets_memory_target": primary["added_bytes"] <= naive_full_bytes / 8,
        "diff_measured_at_N": largest,
        "max_abs_diff_chunked_vs_naive": diffs,
        "max_abs_value": compare["max_abs_value"],
        "max_abs_err_vs_float64": compare["max_abs_err_vs_float64"],
        "target_diff": 1e-5,
        "meets_diff_target": max(diffs.values()) <= 1e-5,
        "chunked_within_1e-5_of_float64": max(compare["max_abs_err_vs_float64"]["chunked"].values()) <= 1e-5,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="V=32768, H=256, T=512, B=2: seconds, a smoke run")
    p.add_argument(
        "--quick",
        action="store_true",
        help="V=151936, H=256, T=1024, B=2, chunks 256,64: the full run's verdicts in < 90 s",
    )
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--chunk-sizes", default="1024,256", help="chunked runs; the first is the headline")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    # internal: one measurement in this process
    p.add_argument("--worker", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    p.add_argument("--n-pos", type=int, help=argparse.SUPPRESS)
    p.add_argument("--chunk-size", type=int, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.small and args.quick:
        p.error("--small and --quick are different sizes: pick one")
    big = dict(vocab=151_936, hidden=1024, seq=4096)
    small = dict(vocab=32_768, hidden=256, seq=512)
    quick = dict(vocab=151_936, hidden=256, seq=1024)  # see the module docstring
    for k, v in (small if args.small else quick if args.quick else big).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.small and args.chunk_sizes == "1024,256":
        args.chunk_sizes = "128,32"  # N = 1024 here: a chunk must be well below N to mean anything
    if args.quick and args.chunk_sizes == "1024,256":
        args.chunk_sizes = "256,64"  # the full run's chunk / N (1024 / 8192, 256 / 8192) at N = 2048
    start = time.perf_counter()
    result = driver(args)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
