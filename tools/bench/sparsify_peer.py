"""Times the reference (torch 2.15 `DataNormSparsifier` mask update, fp32, CPU, 2 torch threads)
on a tensor from a safetensors file and prints one JSON line:
    {"median_ms": ..., "min_ms": ..., "zero_fraction": ...}

Usage: PEER_VENV/bin/python tools/bench/sparsify_peer.py INPUT.safetensors SPARSITY BLOCK_H BLOCK_W ZEROS_PER_BLOCK REPEATS [NORM]

INPUT holds `data` (2-D, or anything that squeezes to 1-D/2-D). NORM is L1 (default) or L2.
add_data() runs once, outside the timed region; each timed call is sparsifier.step(), i.e. one
full update_mask (block scores, block selection, in-block selection). `zero_fraction` is the
fraction of zeros in the resulting mask.
"""
import json, statistics, sys, time, warnings
import torch
from safetensors.torch import load_file
from torch.ao.pruning._experimental.data_sparsifier import DataNormSparsifier

warnings.simplefilter("ignore")
path = sys.argv[1]
sparsity = float(sys.argv[2])
bh, bw, zpb, repeats = map(int, sys.argv[3:7])
norm = sys.argv[7] if len(sys.argv) > 7 else "L1"
torch.set_num_threads(2)
data = load_file(path)["data"].to(torch.float32)
sp = DataNormSparsifier(sparsity_level=sparsity, sparse_block_shape=(bh, bw), zeros_per_block=zpb, norm=norm)
sp.add_data("data", data)
times = []
with torch.no_grad():
    for _ in range(2):
        sp.step()
    for _ in range(repeats):
        t0 = time.perf_counter()
        sp.step()
        times.append((time.perf_counter() - t0) * 1000)
mask = sp.get_mask("data")
print(json.dumps({"median_ms": round(statistics.median(times), 4), "min_ms": round(min(times), 4),
                  "zero_fraction": float((mask == 0).sum()) / mask.numel()}))
