"""The reference side of `cargo xtask bench forward` and `cargo xtask bench train-step`:
transformers' BERT (fp32, CPU) on the same ids as the Rust side, one attention
implementation per process, timed one run at a time on request so that the Rust side can
alternate its runs with ours (the machine's drift then affects both alike).

- forward: `BertModel` under `torch.inference_mode()`.
- train-step: `BertForSequenceClassification` (2 classes, dropout off as in shears), one
  step = forward, cross-entropy, backward, `clip_grad_norm_(1.0)` over every parameter,
  AdamW (lr 2e-5, weight decay 0.01), reading back the loss and the correct count as the
  Rust step does. Labels are `i % 2`.

Usage: PEER_VENV/bin/python tools/bench/bert_peer.py MODEL_DIR forward|train-step eager|sdpa THREADS

Then one command per line on stdin, one JSON object per line on stdout in reply:
- `size BATCH SEQ`: builds the inputs, resets the peak resident memory (/proc/self/clear_refs)
  and runs twice to warm up -> {"ready": true}
- `run`: one timed run at the current size -> {"ms": milliseconds}
- `peak`: the peak resident memory since the last `size` -> {"peak_mib": MiB}
End of input ends the process.
"""
import json, sys, time
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


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    model_dir, what, attn, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    from transformers import BertForSequenceClassification, BertModel
    if what == "forward":
        model = BertModel.from_pretrained(model_dir, attn_implementation=attn).eval()
    elif what == "train-step":
        model = BertForSequenceClassification.from_pretrained(
            model_dir, num_labels=2, attn_implementation=attn,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    else:
        sys.exit(f"unknown benchmark {what!r} (forward or train-step)")
    vocab = model.config.vocab_size
    run = None
    for line in sys.stdin:
        cmd = line.split()
        if cmd[:1] == ["size"] and len(cmd) == 3:
            batch, seq = int(cmd[1]), int(cmd[2])
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
            reply({"ready": True})
        elif cmd == ["run"] and run is not None:
            t = time.perf_counter()
            run()
            reply({"ms": (time.perf_counter() - t) * 1000})
        elif cmd == ["peak"]:
            reply({"peak_mib": peak_mib()})
        else:
            sys.exit(f"bert_peer.py: cannot do {line.strip()!r} (see the usage in this file)")


main()
