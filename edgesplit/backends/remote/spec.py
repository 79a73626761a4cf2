"""What a cloud stage process is told to be (data only, JSON), and how it builds its units from it."""
import json
from dataclasses import dataclass
from typing import Dict, List

from torch import nn

from edgesplit.assemble import RunSpec
from edgesplit.assemble.wire import from_data, to_data


@dataclass(frozen=True)
class StageSpec:
    """Cloud stage `stage` (0-based; logical rank stage + 1) of `stages`: its layer units by global
    index, its device, and the edge's run spec (without the secret), so every host runs the same run."""
    stage: int
    stages: int
    units: List[int]
    device: str
    run: RunSpec

    @property
    def rank(self) -> int:
        return self.stage + 1

    @property
    def last(self) -> bool:
        return self.stage == self.stages - 1

    def to_json(self) -> str:
        return json.dumps(to_data(self))

    @staticmethod
    def from_json(text: str) -> "StageSpec":
        try:
            return from_data(StageSpec, json.loads(text))
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"malformed stage spec: {type(e).__name__}: {e}") from None

    def build_units(self) -> Dict[int, nn.Module]:
        """This stage's units as the model's `_target_` builds them; the edge then sends their
        weights, so a host's own initialisation never matters."""
        units, _, _ = self.run.units()
        return {i: units[i] for i in self.units}
