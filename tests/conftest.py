"""Test-wide settings: one torch thread per pytest worker (the suite runs 2 workers on 2 cores;
torch's default thread pool per worker oversubscribes the cores and makes small ops 10x slower)."""

import torch

torch.set_num_threads(1)
