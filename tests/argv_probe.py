"""A stand-in program for tests: records its argv, cwd and AUTOEXP_* environment as JSON."""

import json
import os
import sys

record = {"argv": sys.argv[1:], "cwd": os.getcwd(),
          "env": {k: v for k, v in os.environ.items() if k.startswith(("AUTOEXP_", "MY_"))}}
with open(os.path.join(os.getcwd(), "probe.json"), "w") as fh:
    json.dump(record, fh)
print("probe", json.dumps(record))
