"""The one place that turns a validated config into a run's typed parts, once; nothing writes into
the config (what the data decides, such as the classes, lives in the parts)."""
from typing import Any, Dict, List, Optional, Sized, Tuple, cast

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from edgesplit.assemble.link_fit import check_link
from edgesplit.assemble.parts import (CodecParts, Crossings, DataFacts, DistSpec, ModelSpec, PipelineSpec,
                                      RunParts, RunSpec)
from edgesplit.clients.schema import simulated
from edgesplit.clients.spec import ClientsRun, ClientsSpec
from edgesplit.data.datasets import Datasets, build_datasets
from edgesplit.model.bottleneck import Bottleneck, boundary_channels, boundary_shapes
from edgesplit.model.mobilenetv2 import check_num_classes
from edgesplit.model.partition import split_units
from edgesplit.privacy.defenses import Defenses
from edgesplit.privacy.schema import PrivacyConfig
from edgesplit.run.lr_schedule import OptimizerSpec
from edgesplit.run.precision import Precision
from edgesplit.validate import validate_partition


def _container(node: DictConfig) -> Dict[str, Any]:
    return cast(Dict[str, Any], OmegaConf.to_container(node, resolve=True))


def facts_of(datasets: Datasets) -> DataFacts:
    return DataFacts(datasets.num_classes, len(cast(Sized, datasets.train)),
                     len(cast(Sized, datasets.val)), tuple(datasets.input_shape))


def pipeline_of(b: DictConfig) -> PipelineSpec:
    """The `pipeline_backend` config as a PipelineSpec (a cloud host's role=cloud needs no more)."""
    devices = b.devices
    if not isinstance(devices, str):
        devices = tuple(devices) if OmegaConf.is_list(devices) else (devices,)
    dist = None
    if "link" in b:
        link = b.link
        dist = DistSpec(link.uplink_mbps or link.bandwidth_mbps, link.downlink_mbps or link.bandwidth_mbps,
                        float(link.latency_ms), float(b.timeout_s), b.order, b.role, str(b.master_addr),
                        int(b.master_port), b.get("secret"), b.get("secret_file"),
                        float(b.get("edge_slowdown", 1.0)))
    return PipelineSpec(str(b._target_), str(b.name), int(b.chunks), devices, b.checkpoint,
                        bool(b.deferred_batch_norm), dist)


def _bottleneck(cfg: DictConfig, shapes: Tuple[Tuple[int, ...], Tuple[int, ...]]) -> Optional[Bottleneck]:
    ratio = cfg.compressor.get("channel_ratio")
    return None if ratio is None else Bottleneck(float(ratio), shapes)


def _crossings(cfg: DictConfig, shapes: Tuple[Tuple[int, ...], Tuple[int, ...]],
               bottleneck: Optional[Bottleneck]) -> Crossings:
    """One sample's shape at each boundary, with the channels that cross (a bottleneck's encoder
    sends fewer); the most rows of a micro-batch: a train or eval batch cut into `chunks` as
    torch.chunk does."""
    front, back = (shape if bottleneck is None else (boundary_channels(bottleneck, name)[1], *shape[1:])
                   for name, shape in zip(("front", "back"), shapes))
    batch = max(int(cfg.data.batch_size), int(cfg.data.get("eval_batch_size") or 0))
    return Crossings(tuple(front), tuple(back), -(-batch // int(cfg.pipeline_backend.chunks)))


def assemble(cfg: DictConfig, facts: Optional[DataFacts] = None,
             base_units: Optional[List[nn.Module]] = None) -> RunParts:
    """The run of the validated `cfg`: its datasets (built from `data` unless `facts` are given,
    as where the samples come from elsewhere), the model's units (`base_units`, or built from the
    seed) checked against the data, with the bottleneck's halves, split into partitions; and the
    typed spec of every other part, a shaped dist link checked against its timeout. Sets torch's
    threads first (`threads`)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    datasets = None
    if facts is None:
        datasets = build_datasets(cfg.data)
        facts = facts_of(datasets)
    p = cfg.partition
    model = ModelSpec(_container(cfg.model), facts.num_classes, int(cfg.seed), p.front, p.back,
                      p.cloud_stages)
    base = model.base_units() if base_units is None else base_units
    check_num_classes(base, facts.num_classes, facts.input_shape)
    validate_partition(p, len(base))
    shapes = boundary_shapes(base, p.front, p.back, facts.input_shape)
    bottleneck = _bottleneck(cfg, shapes)
    codecs = CodecParts(_container(cfg.compressor), facts.train_size, bottleneck)
    s = cfg.schedule
    spec = RunSpec(int(cfg.seed), cfg.threads, facts, model, codecs,
                   Precision(cfg.precision, bool(cfg.channels_last), float(cfg.loss_scale)),
                   pipeline_of(cfg.pipeline_backend),
                   OptimizerSpec(_container(cfg.optimizer), int(s.epochs), int(s.warmup_epochs)),
                   _crossings(cfg, shapes, bottleneck), Defenses.of(cfg.get("privacy")))
    check_link(spec, base, int(cfg.data.batch_size))
    units, front, back = spec.units(base)
    split = split_units(units, front, back, p.cloud_stages, facts.input_shape)
    privacy = OmegaConf.to_object(cfg.privacy) if "privacy" in cfg else PrivacyConfig()
    clients = (_clients(cfg, datasets) if datasets is not None and "clients" in cfg and simulated(cfg.clients)
               else None)
    return RunParts(spec, split, datasets, cast(PrivacyConfig, privacy), clients)


def _clients(cfg: DictConfig, datasets: Datasets) -> ClientsRun:
    """The `clients` keys and the loader's as a ClientsSpec, and the partition of the training set."""
    c, d = cfg.clients, cfg.data
    spec = ClientsSpec(int(c.count), str(c.partition), float(c.alpha), int(c.min_samples),
                       int(c.shards_per_client), str(c.algorithm), int(c.rounds_per_epoch),
                       None if c.local_steps is None else int(c.local_steps), float(c.fraction),
                       float(c.holdout), int(cfg.seed), int(d.batch_size),
                       int(d.eval_batch_size or d.batch_size),
                       int(d.num_workers), d.get("augment") == "fixed", int(c.min_per_round),
                       cast(Dict[str, Any], OmegaConf.to_container(d, resolve=True)))
    return ClientsRun.of(spec, datasets.train)


def derived_config(spec: RunSpec) -> Dict[str, Any]:
    """The keys the data decides, by dotted name, as a checkpoint's config records them: the
    classes, the cache rows and the bottleneck's shapes (where there is one)."""
    out: Dict[str, Any] = {"model.num_classes": spec.facts.num_classes,
                           "compressor.num_samples": spec.codecs.num_samples}
    if spec.codecs.bottleneck is not None:
        out["compressor.shapes"] = [list(s) for s in spec.codecs.bottleneck.shapes]
    return out
