"""A toy data-parallel training (PyTorch DDP, CPU, gloo) for the multi-node example: each rank fits
the same line to its own noisy samples and logs its loss. Started by torchrun (RANK, WORLD_SIZE)."""

import argparse
import os
import socket

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group(backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    node = os.environ.get("SLURMD_NODENAME", socket.gethostname())
    print(f"rank {rank} of {world} on {node}", flush=True)

    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(256, 1, generator=generator)
    y = 3 * x + 2 + 0.1 * torch.randn(256, 1, generator=generator)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    for step in range(args.steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()  # gradients are averaged over the ranks here
        optimizer.step()
        print(f"rank {rank} step {step} loss: {loss.item():.5f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
