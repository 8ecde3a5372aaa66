"""Step time of the `tiny` preset: fp32 (no casts) vs the cast recipes, measured in one run.

    python scripts/bench_train.py [--steps 10] [--rounds 3] [--threads N] [--device auto]
                                  [--only fp8,nvfp4] [OVERRIDES...]
    python scripts/bench_train.py --hf [--steps 10] [--rounds 3] [--threads N] [--device auto]

`--hf`: Hugging Face's Llama (model=hf, precisionlab.train.hf) against our llama (model.arch=llama)
at the `tiny` preset's sizes, each in fp32, nvfp4, mxfp8 and fp8: the HF model's fp32 step over ours
(goal <= 1.3x) and each recipe's cast overhead (recipe step / fp32 step of the same model; goal: HF's
within 10% of ours). fp8's preset keeps lm_head in fp32 in both models.

One training step = batch, forward, backward, clipping, AdamW (moments and weights cast where the
preset says); "diagnostics every 10" is nvfp4 with `diagnostics.every=10` (every 10th step observed: cast
statistics, an fp32 forward + backward, the proxies), so its ratio to "nvfp4" is the diagnostics' amortised
cost. Rounds interleave the precisions so machine load hits them alike; the table shows
the median over rounds of the mean step time, tokens/s, and the ratio to fp32
(goals: element casts <= 1.25x the fp32 step, nvfp4 <= 2x). Extra arguments are Hydra
overrides applied to every variant (e.g. model=small train.batch_size=32).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_module

from precisionlab.config import validate
from precisionlab.runtime import resolve_device
from precisionlab.train.checkpoint import build_model
from precisionlab.train.data import get_batch, load_dataset
from precisionlab.train.diagnostics import StepDiagnostics
from precisionlab.train.optim import MasterFormat, MomentFormats, build_optimizer, round_master, round_moments

VARIANTS = {
    "fp32": ["precision=fp32"],
    "fp8": ["precision=fp8"],
    "fp8 delayed": ["precision=fp8_delayed"],  # Transformer Engine's delayed scaling (amax history)
    "fp8 deepseek": ["precision=fp8_deepseek"],  # DeepSeek-V3: 1x128 tiles, 128x128 weight blocks, fp32 scales
    "msamp o1": ["precision=msamp_o1"],  # fp8 plus E4M3 weight gradients
    "msamp o2": ["precision=msamp_o2"],  # plus AdamW moments in E4M3 / FP16
    # fp32 operands, partial sums in e8m13 (DeepSeek-V3's ~14 bits): the accumulator's own cost
    "acc e8m13 k=1": ["precision.accumulate.format=e8m13", "precision.accumulate.k=1"],
    "acc e8m13 k=128": ["precision.accumulate.format=e8m13", "precision.accumulate.k=128"],
    "mask e8m3": ["precision=mask", "precision.format=e8m3"],
    "mxfp8": ["precision=mxfp8"],
    # only the attention matmuls cast (e4m3fn, per-tensor scales): the explicit path's cost over fused SDPA
    "attention e4m3fn": ["precision.attention.format=e4m3fn", "precision.scaling=tensor"],
    "mxfp4": ["precision=mxfp4"],
    "nvfp4": ["precision=nvfp4"],  # stochastic rounding on gradients, Hadamard-16 on wgrad operands
    "fp8 moments": ["optim.state_format=e4m3fn"],  # fp32 GEMMs, both AdamW moments stored in E4M3 (per-tensor scale)
    # fp32 GEMMs, the weights stored in bf16 with stochastic rounding (the dearer rounding): its own cost
    "bf16 master": ["optim.master_format=bf16", "optim.master_rounding=stochastic"],
    "diagnostics every 10": ["precision=nvfp4", "diagnostics.every=10"],  # train/diagnostics.py, as the loop runs it
}


# --hf: the same recipes on our llama and on HF's Llama of its sizes (configs/model/hf.yaml)
HF_MODELS = {"ours": ["model.arch=llama"], "hf": ["model=hf"]}
HF_RECIPES = {"fp32": ["precision=fp32"], "nvfp4": ["precision=nvfp4"], "mxfp8": ["precision=mxfp8"],
              "fp8": ["precision=fp8"]}


class _Rows:
    """A recorder of diagnostics rows that keeps none (the benchmark times their computation)."""

    def diagnostics(self, step, rows):
        pass


def make_step(cfg, device, tokens):
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    optimizer, moments = build_optimizer(model, cfg.optim), MomentFormats.from_cfg(cfg.optim)
    master = MasterFormat.from_cfg(cfg.optim)
    round_master(model, master, cfg.seed, 0)
    gen = torch.Generator().manual_seed(cfg.seed)
    diagnostics = StepDiagnostics.from_cfg(cfg, recorder=_Rows())
    count = 0

    def step():
        nonlocal count
        count += 1
        x, y = (b.to(device) for b in get_batch(tokens, cfg.train.batch_size, cfg.train.seq_len, gen))
        with diagnostics.at(count, model, (x, y), lambda logits, loss: loss):
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            round_moments(optimizer, moments)
            round_master(model, master, cfg.seed, count)  # its stochastic draws differ from step to step
        return loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", default=None, help="comma-separated variants besides fp32 (default: all: "
                        + ", ".join(VARIANTS) + ")")
    parser.add_argument("--hf", action="store_true", help="HF Llama vs our llama at the tiny sizes (fp32, nvfp4, mxfp8, fp8)")
    args, overrides = parser.parse_known_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.hf:
        return compare_hf(args, overrides)
    chosen = set(VARIANTS) if args.only is None else set(args.only.split(","))
    if not chosen <= set(VARIANTS):
        parser.error(f"unknown variant in --only: {', '.join(sorted(chosen - set(VARIANTS)))}; accepted: {', '.join(VARIANTS)}")
    with initialize_config_module(config_module="precisionlab.configs", version_base="1.3"):
        cfgs = {name: validate(compose(config_name="train", overrides=[*extra, *overrides, f"device={args.device}"]))
                for name, extra in VARIANTS.items() if name == "fp32" or name in chosen}
    base = cfgs["fp32"]
    device = resolve_device(base.device)
    times = timed(cfgs, device, args)
    tokens_per_step = base.train.batch_size * base.train.seq_len
    n_params = sum(p.numel() for p in build_model(base).parameters())
    print(f"model={base.model.arch} {n_params / 1e6:.2f}M params, batch {base.train.batch_size} x seq {base.train.seq_len}, "
          f"device {device}, threads {torch.get_num_threads()}, {args.rounds} rounds x {args.steps} steps")
    print(f"{'precision':<20} {'ms/step':>9} {'tokens/s':>10} {'vs fp32':>8}")
    ref = statistics.median(times["fp32"])
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<20} {t * 1e3:>9.1f} {tokens_per_step / t:>10.0f} {t / ref:>7.2f}x")


def timed(cfgs: dict, device, args) -> dict[str, list[float]]:
    """Seconds per step of each config, per round (rounds interleave the configs)."""
    tokens = load_dataset(next(iter(cfgs.values())).data)[0]
    steps = {name: make_step(cfg, device, tokens) for name, cfg in cfgs.items()}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = step()
            loss.item()  # waits for the device
            times[name].append((time.perf_counter() - start) / args.steps)
    return times


def compare_hf(args, overrides: list[str]) -> None:
    """--hf: HF's Llama vs our llama, fp32 and the HF_RECIPES, one table."""
    with initialize_config_module(config_module="precisionlab.configs", version_base="1.3"):
        cfgs = {(model, recipe): validate(compose(config_name="train", overrides=[
                    *model_args, *recipe_args, *overrides, f"device={args.device}"]))
                for model, model_args in HF_MODELS.items() for recipe, recipe_args in HF_RECIPES.items()}
    device = resolve_device(cfgs["ours", "fp32"].device)
    times = {key: statistics.median(ts) for key, ts in timed(cfgs, device, args).items()}
    base = cfgs["ours", "fp32"]
    params = {model: sum(p.numel() for p in build_model(cfgs[model, "fp32"]).parameters()) for model in HF_MODELS}
    print(f"tiny sizes: ours {params['ours'] / 1e6:.3f}M params, hf {params['hf'] / 1e6:.3f}M params, batch "
          f"{base.train.batch_size} x seq {base.train.seq_len}, device {device}, threads {torch.get_num_threads()}, "
          f"{args.rounds} rounds x {args.steps} steps")
    print(f"{'precision':<10} {'ours ms':>8} {'hf ms':>8} {'hf/ours':>8} {'ours vs fp32':>13} {'hf vs fp32':>11} "
          f"{'overhead hf/ours':>17}")
    for recipe in HF_RECIPES:
        ours, hf = times["ours", recipe], times["hf", recipe]
        over_ours, over_hf = ours / times["ours", "fp32"], hf / times["hf", "fp32"]
        print(f"{recipe:<10} {ours * 1e3:>8.1f} {hf * 1e3:>8.1f} {hf / ours:>7.2f}x {over_ours:>12.2f}x {over_hf:>10.2f}x "
              f"{over_hf / over_ours:>16.2f}x")


if __name__ == "__main__":
    main()
