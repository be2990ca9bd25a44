"""The reference side of `cargo xtask bench forward` and `cargo xtask bench train-step`:
transformers' BERT (fp32, CPU) on the same ids as the Rust side, one attention
implementation per process.

- forward: `BertModel` under `torch.inference_mode()`.
- train-step: `BertForSequenceClassification` (2 classes, dropout off as in shears), one
  step = forward, cross-entropy, backward, `clip_grad_norm_(1.0)` over every parameter,
  AdamW (lr 2e-5, weight decay 0.01), reading back the loss and the correct count as the
  Rust step does. Labels are `i % 2`.

Prints one JSON object per size on stdout: median, min and max milliseconds over ITERS runs
(after 2 warm-up runs) and the peak resident memory of the process during them (the peak is
reset through /proc/self/clear_refs before each size's warm-up).

Usage: PEER_VENV/bin/python tools/bench/bert_peer.py MODEL_DIR forward|train-step eager|sdpa
       ITERS THREADS BATCHxSEQ [BATCHxSEQ ...]
"""
import json, statistics, sys, time
import torch


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    model_dir, what, attn, iters, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    sizes = [tuple(map(int, s.split("x"))) for s in sys.argv[6:]]
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    from transformers import BertForSequenceClassification, BertModel
    if what == "forward":
        model = BertModel.from_pretrained(model_dir, attn_implementation=attn).eval()
    else:
        model = BertForSequenceClassification.from_pretrained(
            model_dir, num_labels=2, attn_implementation=attn,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    vocab = model.config.vocab_size
    for batch, seq in sizes:
        # The same deterministic ids as the Rust side: (i * 7919 + 13) % (vocab - 1000) + 1000.
        ids = torch.tensor([[(i * 7919 + 13) % (vocab - 1000) + 1000 for i in range(b * seq, (b + 1) * seq)]
                            for b in range(batch)])
        mask = torch.ones_like(ids)
        labels = torch.arange(batch) % 2
        if what == "forward":
            def run():
                with torch.inference_mode():
                    model(input_ids=ids, attention_mask=mask)
        else:
            def run():
                out = model(input_ids=ids, attention_mask=mask, labels=labels)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                out.loss.item()
                (out.logits.argmax(1) == labels).sum().item()
        reset_peak()
        run()
        run()
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            run()
            times.append((time.perf_counter() - t) * 1000)
        print(json.dumps({"batch": batch, "seq": seq, "median_ms": statistics.median(times),
                          "min_ms": min(times), "max_ms": max(times), "peak_mib": peak_mib()}), flush=True)


main()
