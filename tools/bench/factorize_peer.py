"""Times the reference (composer 0.32.1 `factorize_matrix`, fp32, CPU, 2 torch threads) on the
inputs of a safetensors file and prints one JSON line:
    {"median_ms": ..., "min_ms": ..., "nmse": ..., "nmse_true": ...}

Usage: PEER_VENV/bin/python tools/bench/factorize_peer.py INPUT.safetensors RANK N_ITERS REPEATS

INPUT holds `x` [N, D] (rows are samples), `w` [D, M] (stored [in, out], i.e. nn.Linear.weight
transposed) and `b` [M]. RANK is an int, or a float < 1 (composer: fraction of D, capped at M).
The target y = x @ w + b is computed once, outside the timed region; each timed call is
factorize_matrix(x, y, w, None, bias=b, rank=RANK, n_iters=N_ITERS). `nmse` is what composer
reports (with bias passed it compares y - b against a prediction that includes b; see
docs/FACTORIZE.md); `nmse_true` measures composer's solution against y itself.
"""
import json, statistics, sys, time
import torch
from safetensors.torch import load_file
from composer.algorithms.factorize.factorize_core import factorize_matrix

path, rank_s, n_iters, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rank = float(rank_s) if "." in rank_s or "e" in rank_s.lower() else int(rank_s)
torch.set_num_threads(2)
t = load_file(path)
x, w, b = (t[k].to(torch.float32) for k in ("x", "w", "b"))
times = []
with torch.no_grad():
    y = x @ w + b
    for _ in range(2):
        sol = factorize_matrix(x, y, w, None, bias=b, rank=rank, n_iters=n_iters)
    for _ in range(repeats):
        t0 = time.perf_counter()
        sol = factorize_matrix(x, y, w, None, bias=b, rank=rank, n_iters=n_iters)
        times.append((time.perf_counter() - t0) * 1000)
    # The error of composer's solution measured properly: y against x wa wb + bias.
    y_hat = (x @ sol.Wa @ sol.Wb + sol.bias) if sol.Wb is not None else (x @ sol.Wa + sol.bias)
    nmse_true = float(((y - y_hat) ** 2).mean() / y.var())
print(json.dumps({"median_ms": round(statistics.median(times), 4), "min_ms": round(min(times), 4),
                  "nmse": float(sol.nmse), "nmse_true": nmse_true}))
