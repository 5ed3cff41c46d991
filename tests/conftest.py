import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import torch

torch.set_num_threads(1)
collect_ignore = [
    "helpers"
]  # imported by the tests; collecting it for doctests would register its plug-ins twice
