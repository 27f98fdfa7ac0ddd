"""A stand-in for a training script: prints its parameters and a few loss lines."""

import argparse
import math
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--rank", type=int, required=True)
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--out", required=True)
args = parser.parse_args()

print(f"params: rank={args.rank} lr={args.lr} run={os.environ.get('AUTOEXP_RUN_NAME')} "
      f"attempt={os.environ.get('AUTOEXP_ATTEMPT')} cwd={os.getcwd()}", flush=True)
for step in range(args.steps):
    loss = math.exp(-args.lr * 1e4 * (step + 1)) + 1.0 / args.rank
    print(f"step {step} loss: {loss:.4f}", flush=True)
    time.sleep(1)
os.makedirs(args.out, exist_ok=True)
path = os.path.join(args.out, "checkpoint.txt")
with open(path, "w") as fh:
    fh.write(f"rank={args.rank} lr={args.lr}\n")
print(f"saved checkpoint {path}", flush=True)
