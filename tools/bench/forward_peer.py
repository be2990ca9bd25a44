"""Times the reference (transformers BertModel, eager, fp32, CPU) forward pass on the same
input as `cargo xtask bench forward`, and prints the median in milliseconds.

Usage: PEER_VENV/bin/python tools/bench/forward_peer.py MODEL_DIR BATCH SEQ ITERS THREADS
"""
import statistics, sys, time
import torch
from transformers import BertModel

model_dir, batch, seq, iters, threads = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(threads)
model = BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()
# The same deterministic ids as the Rust side: (i * 7919 + 13) % (vocab - 1000) + 1000.
vocab = model.config.vocab_size
ids = torch.tensor([[(i * 7919 + 13) % (vocab - 1000) + 1000 for i in range(b * seq, (b + 1) * seq)] for b in range(batch)])
mask = torch.ones_like(ids)
times = []
with torch.inference_mode():
    for _ in range(2):
        model(input_ids=ids, attention_mask=mask)
    for _ in range(iters):
        t = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        times.append((time.perf_counter() - t) * 1000)
print(f"{statistics.median(times):.3f}")
