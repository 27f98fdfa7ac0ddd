# %% [markdown]
# # autoexp from a notebook
# Run a Python function over the quickstart sweep (8 points) as one Slurm array through submitit,
# follow it, and read what every run returned. Cells are marked `# %%`; as a script:
# `python examples/notebook.py` on a Slurm login node.

# %%
import time
from pathlib import Path

import autoexp

EXAMPLES = Path(globals().get("__file__", "examples/notebook.py")).resolve().parent


def train(rank, lr):
    """Runs inside an array task: gets the run's parameters, returns what the notebook reads back."""
    run = autoexp.current_run()  # name, typed params, run_dir, exp_dir, attempt
    loss = 1.0
    for step in range(5):
        loss = loss * (1 - lr * 1e4) + 1.0 / rank
        print(f"step {step} loss: {loss:.4f}", flush=True)  # the sidecar keeps the last loss
        time.sleep(1)
    return {"run": run.name, "attempt": run.attempt, "loss": loss}


# %% Launch: the same YAML as `autoexp launch examples/quickstart.yaml`; its `command` is replaced.
launched = autoexp.launch_function(train, EXAMPLES / "quickstart.yaml", [f"name=notebook-{time.strftime('%Y%m%d-%H%M%S')}"])
print(f"array job {launched.arrays[0]}, sidecar job {launched.sidecar}, directory {launched.exp_dir}")

# %% Poll: autoexp.status() is what `autoexp status --json` prints.
while True:
    status = autoexp.status(launched.exp_dir)
    print(time.strftime("%H:%M:%S"), status["counts"])
    if status["done"]:
        break
    time.sleep(5)

# %% Read the results: a return value per run (a RunFailed if the function raised).
for name, value in autoexp.results(launched.exp_dir).items():
    print(f"{name:16} {value}")
print((launched.exp_dir / "experiment_summary.md").read_text())
