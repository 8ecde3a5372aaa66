"""precisionlab's casts in your own training loop: a tiny Hugging Face Llama (built from its config, no
download) trained on precisionlab's built-in corpus in fp32 and under MXFP8, each run tracked into a results
store with its model factory (scripts/own_loop_model.py) and checkpoint. Then:

    precisionlab report --store STORE --sweep own-loop
    PYTHONPATH=scripts precisionlab sharpness --store STORE --sweep own-loop

    python scripts/example_own_loop.py [--store results/own_loop.db] [--steps 40]
"""

import argparse
import sys
from pathlib import Path

import torch

import precisionlab
from precisionlab.train.data import get_batch, load_dataset

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--store", default="results/own_loop.db")
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--checkpoints", default="checkpoints", help="folder for the runs' checkpoints")
args = parser.parse_args()
try:
    import transformers  # noqa: F401 -- own_loop_model builds the model with it
except ImportError:
    print('error: this example needs transformers; pip install "precisionlab[hf]"', file=sys.stderr)
    sys.exit(2)
from own_loop_model import tiny_llama  # noqa: E402 -- the model factory; scripts/ is on the path: this script's folder

torch.set_num_threads(1)
data = {"source": "stdlib", "budget_bytes": 400_000}  # in the config too: sharpness draws its validation batch from it
train_tokens, val_tokens, data_meta = load_dataset(data)
model_cfg = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "max_position_embeddings": 64}
for precision in ("fp32", "mxfp8"):
    config = {"model": {"name": "hf-llama", **model_cfg}, "precision": precision, "optim": {"lr": 3e-3},
              "seed": 0, "data": data, "train": {"steps": args.steps, "batch_size": 8, "seq_len": 32}}
    with precisionlab.track(config, store=args.store, sweep="own-loop", checkpoint_dir=args.checkpoints,
                            meta={"data": data_meta}, model_factory=tiny_llama) as run:
        if run.done:  # this config already ran to the end in this store
            print(f"{precision}: run {run.id} already {run.status}")
            continue
        torch.manual_seed(config["seed"])
        model = precisionlab.convert_model(tiny_llama(config), precision, seed=config["seed"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=config["optim"]["lr"])
        batches, val_batches = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        val = [get_batch(val_tokens, 8, 32, val_batches) for _ in range(4)]
        for step in range(1, args.steps + 1):
            x, y = get_batch(train_tokens, 8, 32, batches)
            loss = torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            val_loss = None
            if step % 20 == 0 or step == args.steps:
                with torch.no_grad():
                    val_loss = sum(torch.nn.functional.cross_entropy(model(vx).logits.flatten(0, 1), vy.flatten())
                                   for vx, vy in val).item() / len(val)
            if run.log(step, loss=loss.item(), val_loss=val_loss):
                break  # the loss went NaN/Inf: the run is recorded diverged
        run.checkpoint(step, {"model": model.state_dict()})
    print(f"{precision}: run {run.id} {run.status}, final val loss {val_loss:.3f}")
print(f"now: precisionlab report --store {args.store} --sweep own-loop")
print(f"and: PYTHONPATH={Path(__file__).parent} precisionlab sharpness --store {args.store} --sweep own-loop")
