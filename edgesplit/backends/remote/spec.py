"""What a cloud stage process is told to be (data only, JSON), and how it builds its units from it."""
import json
from dataclasses import asdict, dataclass
from typing import Any, Dict, List

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from edgesplit.model.bottleneck import with_bottlenecks
from edgesplit.model.mobilenetv2 import build_units


@dataclass
class StageSpec:
    """Cloud stage `stage` (0-based; logical rank stage + 1) of `stages`: its layer units by global
    index, its device, and the edge's resolved config, so every host runs the same config."""
    stage: int
    stages: int
    units: List[int]
    num_classes: int
    device: str
    cfg: Dict[str, Any]

    @property
    def rank(self) -> int:
        return self.stage + 1

    @property
    def last(self) -> bool:
        return self.stage == self.stages - 1

    @property
    def config(self) -> DictConfig:
        return OmegaConf.create(self.cfg)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "StageSpec":
        try:
            return StageSpec(**json.loads(text))
        except (TypeError, ValueError) as e:
            raise ValueError(f"malformed stage spec: {type(e).__name__}: {e}") from None

    def build_units(self) -> Dict[int, nn.Module]:
        """This stage's units as the model's `_target_` builds them; the edge then sends their
        weights, so a host's own initialisation never matters."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        units, _, _ = with_bottlenecks(build_units(cfg.model, self.num_classes), cfg, ())
        return {i: units[i] for i in self.units}
