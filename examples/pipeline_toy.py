"""A stand-in for a pipeline's three programs: prepare the data once, train (saving checkpoints),
evaluate one checkpoint on one task."""

import argparse
import math
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("step", choices=["prepare", "train", "eval"])
parser.add_argument("--data", required=True)
parser.add_argument("--lr", type=float, default=0.0)
parser.add_argument("--checkpoints", type=int, default=2)
parser.add_argument("--checkpoint", default="")
parser.add_argument("--task", default="")
parser.add_argument("--out", default=".")
args = parser.parse_args()

if args.step == "prepare":
    os.makedirs(args.data, exist_ok=True)
    with open(os.path.join(args.data, "ready"), "w") as fh:
        fh.write("tokenized\n")
    print(f"prepared {args.data}", flush=True)
    sys.exit(0)

if not os.path.exists(os.path.join(args.data, "ready")):
    sys.exit(f"no prepared data in {args.data}")
if args.step == "train":
    os.makedirs(args.out, exist_ok=True)
    for k in range(1, args.checkpoints + 1):
        time.sleep(1)
        loss = math.exp(-args.lr * 1e4 * k)
        print(f"step {k} loss: {loss:.4f}", flush=True)
        path = os.path.join(args.out, f"checkpoint-{k}.txt")
        with open(path, "w") as fh:
            fh.write(f"lr={args.lr} step={k}\n")
        print(f"saved checkpoint {path}", flush=True)
    sys.exit(0)

# eval: a control run has no checkpoint of its own and is evaluated as the base model
source = args.checkpoint if os.path.exists(args.checkpoint) else "the base model"
score = 0.5 + 0.1 * len(args.task) % 0.4 + (0.1 if source != "the base model" else 0.0)
print(f"evaluating {source} on {args.task}", flush=True)
time.sleep(1)
print(f"accuracy: {score:.3f}", flush=True)
