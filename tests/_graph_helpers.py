"""Small models shared by the graph and clustering tests."""
import torch
from torch import nn


class Residual(nn.Module):
    """``c(h + b(relu(h)))`` with ``h = a(x)``: one residual stream that ``a`` and ``b`` write and ``b`` and ``c`` read."""

    def __init__(self, n_in: int = 6, width: int = 10, n_out: int = 4):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(n_in, width), nn.Linear(width, width), nn.Linear(width, n_out)

    def forward(self, x):
        h = self.a(x)
        return self.c(h + self.b(torch.relu(h)))
