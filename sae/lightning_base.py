"""The base of the project's ``LightningModule``s, tuned for many tiny steps."""

from __future__ import annotations

from typing import Any

import lightning as L


class LeanModule(L.LightningModule):
    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name around every hook call (~46 times a step); it is a
        # plain attribute, so skip nn.Module's parameter/buffer/module bookkeeping.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)
