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
(its N x V temporaries and their gradients are ~5x the 5 GB logits), so it is
measured at every fraction of the positions that fits in the memory available
(N/8, N/4, N/2, N when possible), and its peak at N is the least-squares line
through those points (naive memory is linear in N: every big tensor is N x V).
The JSON says which numbers are measured and which extrapolated.

Differences between the methods are measured on the largest naive run's
inputs; each method is also compared with a float64 reference on a sample of
positions (the naive float32 entropy carries its own rounding error).

Usage:
    python benchmarks/entropy_memory.py            # V=151936, H=1024, T=4096, B=2 (several minutes)
    python benchmarks/entropy_memory.py --small    # V=32768, H=256, T=512, B=2 (seconds)
Prints one JSON object on stdout.
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
    """Deterministic inputs: unit-scale hidden states (post-RMSNorm-like), W ~ N(0, 0.05^2)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    hidden_NH = torch.randn(n_pos, hidden, generator=g)
    weight_VH = torch.randn(vocab, hidden, generator=g) * 0.05
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


def _float64_reference(hidden_NH, weight_VH, targets_N, rows, v_chunk=16384):
    """logp, entropy and grad_hidden (of the same loss) in float64 at the sampled rows."""
    import torch

    h64 = hidden_NH[rows].double()
    logits = torch.cat(
        [h64 @ weight_VH[v : v + v_chunk].double().T for v in range(0, weight_VH.shape[0], v_chunk)], dim=1
    )
    logq = torch.log_softmax(logits, -1)
    p = logq.exp()
    logp = logq.gather(1, targets_N[rows, None]).squeeze(1)
    entropy = -(p * logq).sum(-1)
    # d(logp + H)/dz = onehot - p - p (log p + H)
    g_z = -p * (1 + logq + entropy[:, None])
    g_z[torch.arange(len(rows)), targets_N[rows]] += 1
    # grad_hidden = g_z @ W, accumulated over vocabulary chunks (no float64 copy of all of W).
    grad_h = sum(
        g_z[:, v : v + v_chunk] @ weight_VH[v : v + v_chunk].double()
        for v in range(0, weight_VH.shape[0], v_chunk)
    )
    return logp, entropy, grad_h


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
        g = torch.Generator().manual_seed(args.seed + 1)
        rows = torch.randperm(args.n_pos, generator=g)[: args.ref_rows]
        ref = _float64_reference(hidden_NH, weight_VH, targets_N, rows)
        out["max_abs_err_vs_float64"] = {
            method: {
                n: float((vals[i][rows].double() - ref[i]).abs().max())
                for i, n in enumerate(("logp", "entropy", "grad_hidden"))
            }
            for method, vals in (("naive", mine), ("chunked", other))
        }
        out["float64_reference_rows"] = len(rows)
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
        "--ref-rows",
        str(args.ref_rows),
    ]
    if compare:
        cmd.append("--compare")
    print(f"[entropy_memory] {method} N={n_pos} chunk={chunk_size} ...", file=sys.stderr, flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
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

    # Naive: N/8, N/4, N/2, N while each is predicted to fit in what is available now.
    naive_points: list[tuple[int, int]] = []
    largest = None
    for frac in (8, 4, 2, 1):
        n_pos = n_full // frac
        if naive_points:
            a, b = _fit_line(naive_points)
            predicted = a + b * n_pos
            available = psutil.virtual_memory().available
            # Leave room for the inputs, the interpreter and other users of the machine.
            if predicted + 2 * GIB > available * 0.9:
                print(
                    f"[entropy_memory] skip naive N={n_pos}: predicted {predicted / GIB:.1f} GiB "
                    f"> 90% of {available / GIB:.1f} GiB available",
                    file=sys.stderr,
                )
                break
        res = _spawn(args, "naive", n_pos, chunk_sizes[0])
        naive_points.append((n_pos, res["added_bytes"]))
        largest = n_pos
    # The comparison re-runs the largest naive size that fitted, with the chunked result beside it.
    compare = _spawn(args, "naive", largest, chunk_sizes[0], compare=True)
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
        "threads": args.threads,
        "memory_method": primary["memory_method"]
        + "; one fresh subprocess per measurement, run one at a time; "
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
        "float64_reference_rows": compare["float64_reference_rows"],
        "target_diff": 1e-5,
        "meets_diff_target": max(diffs.values()) <= 1e-5,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="V=32768, H=256, T=512, B=2: a quick run")
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--chunk-sizes", default="1024,256", help="chunked runs; the first is the headline")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-rows", type=int, default=32, help="positions checked against float64")
    # internal: one measurement in this process
    p.add_argument("--worker", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    p.add_argument("--n-pos", type=int, help=argparse.SUPPRESS)
    p.add_argument("--chunk-size", type=int, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    big = dict(vocab=151_936, hidden=1024, seq=4096)
    small = dict(vocab=32_768, hidden=256, seq=512)
    for k, v in (small if args.small else big).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.small and args.chunk_sizes == "1024,256":
        args.chunk_sizes = "128,32"  # N = 1024 here: a chunk must be well below N to mean anything
    print(json.dumps(driver(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
