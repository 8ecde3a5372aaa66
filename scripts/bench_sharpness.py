"""Cost of each sharpness metric in units of one forward pass, measured in one run.

    python scripts/bench_sharpness.py [--threads 1] [--repeats 3]

The model is a small stand-in language model (embedding, causal mean-mixing, MLP, head)
on a fixed batch; the ratios (metric time / forward time) are what carries over to other
models, not the absolute times. Prints one table; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from precisionlab.train.sharpness import hessian_top_eigenvalue, hessian_trace, keskar_sharpness, model_logit_sharpness


class StandInLM(nn.Module):
    def __init__(self, vocab: int = 256, width: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.head = nn.Linear(width, vocab)

    def forward(self, idx):  # (B, T) -> (B, T, V)
        x = self.embed(idx)  # (B, T, width)
        counts = torch.arange(1, idx.shape[1] + 1, device=idx.device).unsqueeze(-1)
        x = x.cumsum(dim=1) / counts  # causal mean of the prefix
        return self.head(x + self.mlp(x))


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = StandInLM()
    inputs = torch.randint(0, 256, (16, 64))
    targets = torch.randint(0, 256, (16, 64))
    params = list(model.parameters())

    def loss_fn():
        return nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())

    def forward_backward():
        torch.autograd.grad(loss_fn(), params)

    steps = 10
    # Hessian metrics build the gradient graph once, then pay per product: the per-product
    # cost is the difference between two runs over the difference in products. tol is tiny
    # so that every iteration runs.
    rows = [
        ("forward (F)", lambda: loss_fn(), None),
        ("forward + backward", forward_backward, None),
        ("model_logit_sharpness (whole call)", lambda: model_logit_sharpness(model, inputs, targets), None),
        (f"keskar_sharpness, steps={steps} (whole call)", lambda: keskar_sharpness(loss_fn, params, steps=steps), None),
        ("hessian_top_eigenvalue, per iteration",
         lambda: hessian_top_eigenvalue(loss_fn, params, iters=20, tol=1e-300),
         (lambda: hessian_top_eigenvalue(loss_fn, params, iters=5, tol=1e-300), 15)),
        ("hessian_trace, per sample",
         lambda: hessian_trace(loss_fn, params, samples=20), (lambda: hessian_trace(loss_fn, params, samples=5), 15)),
    ]
    best_time(lambda: loss_fn(), 3)  # warm-up
    print(f"stand-in LM, {sum(p.numel() for p in params):,} parameters, batch {tuple(inputs.shape)}, "
          f"{args.threads} thread(s), best of {args.repeats}")
    print(f"{'metric':<46} {'ms':>9} {'time / F':>9}")
    for name, fn, baseline in rows:
        forward = best_time(lambda: loss_fn(), args.repeats)  # re-measured next to each row
        elapsed = best_time(fn, args.repeats)
        if baseline is not None:
            shorter, fewer = baseline
            elapsed = (elapsed - best_time(shorter, args.repeats)) / fewer
        print(f"{name:<46} {elapsed * 1e3:>9.2f} {elapsed / forward:>9.2f}")

if __name__ == "__main__":
    main()
