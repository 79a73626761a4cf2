"""A run's typed parts, assembled once from a validated config: `assemble(cfg) -> RunParts`."""
from edgesplit.assemble.build import assemble, derived_config, facts_of, pipeline_of
from edgesplit.assemble.parts import (CodecParts, DataFacts, DistSpec, ModelSpec, PipelineSpec, RunParts,
                                      RunSpec)

__all__ = ["assemble", "derived_config", "facts_of", "pipeline_of", "CodecParts", "DataFacts", "DistSpec",
           "ModelSpec", "PipelineSpec", "RunParts", "RunSpec"]
