"""Range checks that the schema cannot express, each value checked here once: one line naming the key."""
import importlib.util
import logging
import math
import os
import tempfile
from dataclasses import fields, is_dataclass
from typing import Any, List

import torch
from omegaconf import DictConfig, OmegaConf

from edgesplit.errors import ConfigError
from edgesplit.logs.mlflow_log import check_tracking_uri
from edgesplit.clients.schema import simulated
from edgesplit.options import (MAX_BITS, MAX_LATENCY_MS, MAX_PORT, MAX_SEED, MAX_TIMEOUT_S, CacheDtype,
                               CheckpointMode, ClientAlgorithm, ClientPartition, EntropyMethod, MonitorMode,
                               MonitorTag, Order, PrecisionName, ResumeMode, Role, Rounding, Scale,
                               bits_in_range, options)
from edgesplit.privacy.checks import validate_measurement

MAX_WIDTH = 8.0  # parameters grow with width²: MobileNetV2 at 8 has ~140 M, at 100 ~22 G
# Groups whose extra keys (`+model.depth=3`) go to their `_target_`, which names any it does not take.
OPEN_GROUPS = ("model", "data")
DATA_DEVICES = "cpu, cpu_resident, cuda, cuda:N"
_ABSENT = object()
log = logging.getLogger(__name__)


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _one_of(kind: Any, key: str, value: Any) -> None:
    """`value` one of the option list `kind` (edgesplit.options)."""
    _check(value in options(kind), key, value, f"allowed: {', '.join(options(kind))}")


def resume_mode(cfg: DictConfig) -> str:
    """`resume` as a ResumeMode: the command line gives a bool for true/false, a str for force."""
    value = cfg.resume
    mode = str(value).lower() if isinstance(value, (bool, str)) else repr(value)
    _check(mode in options(ResumeMode), "resume", value, f"allowed: {', '.join(options(ResumeMode))}")
    return mode


def _unknown_keys(node: DictConfig, prefix: str) -> List[str]:
    """Keys that Hydra's `+key=...` added to a schema node (it bypasses the schema's struct flag)."""
    schema = OmegaConf.get_type(node)
    if not is_dataclass(schema):
        return []  # a `_target_` spec such as compressor.activation: its target takes its keys
    known = {f.name for f in fields(schema)}
    keys = [str(k) for k in node.keys()]
    out = [f"{prefix}{k}" for k in keys if k not in known]
    for k in known & set(keys):
        child = node._get_node(k)
        if isinstance(child, DictConfig) and f"{prefix}{k}" not in OPEN_GROUPS:
            out += _unknown_keys(child, f"{prefix}{k}.")
    return out


def validate(cfg: DictConfig) -> None:
    """Range checks that a schema cannot express; raise ConfigError naming the key. The checks that
    need the model's unit count are in validate_partition."""
    unknown = _unknown_keys(cfg, "")
    if unknown:
        raise ConfigError(f"unknown key {', '.join(unknown)}: not in the schema (edgesplit/config.py); "
                          f"check the spelling (`+` adds a new key, it does not check one)")
    p, s, d, b = cfg.partition, cfg.schedule, cfg.data, cfg.pipeline_backend
    resume_mode(cfg)
    _check(0 < cfg.model.width <= MAX_WIDTH, "model.width", cfg.model.width,
           f"must be in (0, {MAX_WIDTH:g}] (the parameter count grows with width squared)")
    n = cfg.model.num_classes
    _check(n is None or n >= 1, "model.num_classes", n, "must be >= 1 or null (= the dataset's)")
    _check(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be >= 1")
    for key in ("train_size", "val_size", "eval_batch_size"):
        v = d[key]
        _check(v is None or v >= 1, f"data.{key}", v, "must be >= 1 or null")
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
    _check(p.front >= 1, "partition.front", p.front, "must be >= 1 (the edge keeps the input)")
    _check(p.back >= 1, "partition.back", p.back, "must be >= 1 (the edge keeps the labels)")
    _check(p.cloud_stages >= 1, "partition.cloud_stages", p.cloud_stages, "must be >= 1")
    _check(d.get("augment", True) in (True, False, "fixed"), "data.augment", d.get("augment"),
           "allowed: true, false, fixed (each sample's crop and flip kept every epoch)")
    _compressor(cfg.compressor)
    _check(s.lr > 0 and math.isfinite(s.lr), "schedule.lr", s.lr, "must be finite and > 0")
    _check(s.epochs >= 1, "schedule.epochs", s.epochs, "must be >= 1")
    _check(s.warmup_epochs >= 0, "schedule.warmup_epochs", s.warmup_epochs, "must be >= 0")
    _check(0 <= s.momentum < 1, "schedule.momentum", s.momentum, "must be in [0, 1)")
    _check(s.weight_decay >= 0, "schedule.weight_decay", s.weight_decay, "must be >= 0")
    if "betas" in cfg.optimizer:
        betas = list(cfg.optimizer.betas)
        _check(len(betas) == 2 and all(0 <= v < 1 for v in betas), "optimizer.betas", betas,
               "must be two numbers in [0, 1)")
    if "eps" in cfg.optimizer:
        _check(cfg.optimizer.eps > 0, "optimizer.eps", cfg.optimizer.eps, "must be > 0")
    if "image_size" in d:
        _check(d.image_size >= 8, "data.image_size", d.image_size, "must be >= 8")
        _check(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction, "must be in (0, 1)")
    _check(1 <= b.chunks <= d.batch_size, "pipeline_backend.chunks", b.chunks,
           f"must be in 1..data.batch_size ({d.batch_size})")
    _check(b.name != "naive" or b.chunks == 1, "pipeline_backend.chunks", b.chunks,
           "naive runs the whole batch at once: must be 1 (micro-batches: pipeline_backend=gpipe or dist)")
    _one_of(CheckpointMode, "pipeline_backend.checkpoint", b.checkpoint)
    _check(cfg.threads is None or cfg.threads >= 1, "threads", cfg.threads, "must be >= 1 or null")
    cpus = os.cpu_count() or 1
    _check(cfg.threads is None or cfg.threads <= cpus, "threads", cfg.threads,
           f"must be at most {cpus}, this machine's CPUs (os.cpu_count()), or null")
    _check(0 <= cfg.seed <= MAX_SEED, "seed", cfg.seed, f"must be in 0..{MAX_SEED} (2^63-1, torch's seeds)")
    _data_name(d)
    _warmup(s)
    _one_of(PrecisionName, "precision", cfg.precision)
    _one_of(MonitorTag, "checkpoint.monitor", cfg.checkpoint.monitor)
    _one_of(MonitorMode, "checkpoint.mode", cfg.checkpoint.mode)
    _check(cfg.loss_scale > 0 and math.isfinite(cfg.loss_scale), "loss_scale", cfg.loss_scale,
           "must be finite and > 0 (precision=fp16's initial loss scale)")
    _data_device(d.device)
    _check(cfg.log_every >= 1, "log_every", cfg.log_every, "must be >= 1 (steps between log lines)")
    if cfg.logger.name == "mlflow" and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("logger=mlflow needs the mlflow package, which is not installed: "
                          "pip install -e '.[mlflow]'")
    if cfg.logger.name == "mlflow":
        check_tracking_uri(cfg.logger.get("tracking_uri"))
    for key in cfg.hparam_keys:
        _check(OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT, "hparam_keys", key,
               "not a key of this config")
    if "link" in b:  # the dist backend's keys
        validate_dist(b)
    if "privacy" in cfg:  # the defenses' weights (edgesplit.privacy.defenses)
        for key in ("nopeek_weight", "grad_noise"):
            v = cfg.privacy[key]
            _check(v >= 0 and math.isfinite(v), f"privacy.{key}", v, "must be finite and >= 0 (0: off)")
        validate_measurement(cfg.privacy)
    _clients(cfg)


def validate_dist(b: DictConfig) -> None:
    """The dist backend's keys (`pipeline_backend`): also a cloud host's (role=cloud), which runs
    nothing else of its own config."""
    for key in ("bandwidth_mbps", "uplink_mbps", "downlink_mbps"):
        v = b.link[key]
        _check(v is None or v > 0, f"pipeline_backend.link.{key}", v, "must be > 0 or null")
    _check(b.link.latency_ms >= 0, "pipeline_backend.link.latency_ms", b.link.latency_ms, "must be >= 0")
    _check(b.link.latency_ms <= MAX_LATENCY_MS, "pipeline_backend.link.latency_ms", b.link.latency_ms,
           f"must be finite and at most {MAX_LATENCY_MS:g} (a minute)")
    _check(b.timeout_s > 0, "pipeline_backend.timeout_s", b.timeout_s, "must be > 0")
    _check(b.timeout_s <= MAX_TIMEOUT_S, "pipeline_backend.timeout_s", b.timeout_s,
           f"must be finite and at most {MAX_TIMEOUT_S:g} (a day; longer silence is a lost peer)")
    _check(b.link.latency_ms / 1000 < b.timeout_s, "pipeline_backend.link.latency_ms", b.link.latency_ms,
           f"must be below pipeline_backend.timeout_s ({b.timeout_s:g} s): every message would time out")
    _check(1 <= b.master_port <= MAX_PORT, "pipeline_backend.master_port", b.master_port,
           f"must be in 1..{MAX_PORT}")
    _check(b.role is None or b.role in options(Role), "pipeline_backend.role", b.role,
           f"allowed: {', '.join(options(Role))}, null")
    _one_of(Order, "pipeline_backend.order", b.order)
    _check(b.edge_slowdown >= 1, "pipeline_backend.edge_slowdown", b.edge_slowdown,
           "must be >= 1 (the edge's compute time as a multiple of this host's)")


def _clients(cfg: DictConfig) -> None:
    """The `clients` group (edgesplit.clients): sizes, shares, options, and what runs many edges."""
    c = cfg.clients
    for key in ("count", "min_samples", "shards_per_client", "rounds_per_epoch", "min_per_round"):
        _check(c[key] >= 1, f"clients.{key}", c[key], "must be >= 1")
    _check(c.local_steps is None or c.local_steps >= 1, "clients.local_steps", c.local_steps,
           "must be >= 1 or null (each client's share of the epoch)")
    _check(c.alpha > 0 and math.isfinite(c.alpha), "clients.alpha", c.alpha, "must be finite and > 0")
    _check(0 < c.fraction <= 1, "clients.fraction", c.fraction, "must be in (0, 1]")
    _check(0 <= c.holdout < 1, "clients.holdout", c.holdout, "must be in [0, 1)")
    _one_of(ClientPartition, "clients.partition", c.partition)
    _one_of(ClientAlgorithm, "clients.algorithm", c.algorithm)
    b = cfg.pipeline_backend
    if b.name == "dist":
        _check(b.edges is None or b.edges == c.count, "pipeline_backend.edges", b.edges,
               f"must equal clients.count={c.count} (one edge process per client) or null (= clients.count)")
        validate_client(cfg)
    if not simulated(c):
        return
    needs = [(b.name != "dist" or cfg.partition.cloud_stages == 1,
              "partition.cloud_stages=1 with pipeline_backend=dist: a cloud of several stages serving many "
              "edges is not built yet"),
             (cfg.precision != "fp16",
              "precision=fp32 or bf16: one fp16 loss scaler per client is not built"),
             (cfg.data.device == "cpu", "data.device=cpu: each client's batches come from the CPU loader"),
             (not cfg.pipeline_backend.deferred_batch_norm,
              "pipeline_backend.deferred_batch_norm=false: it swaps the BatchNorms the clients share"),
             ("privacy" not in cfg or not (cfg.privacy.label_leak or cfg.privacy.input_leak),
              "privacy.label_leak=false and privacy.input_leak=false: leakage per client is not measured")]
    for ok, what in needs:
        if not ok:
            raise ConfigError(f"clients.count={c.count} needs {what}")


def validate_client(cfg: DictConfig) -> None:
    """`pipeline_backend.client`: which client an edge host of many edges is (role=edge), else null.
    An edge host runs the cloud's config and checks no more of its own (train.py)."""
    b, c = cfg.pipeline_backend, cfg.clients
    if b.role == "edge" and simulated(c):
        _check(b.client is not None and 0 <= b.client < c.count, "pipeline_backend.client", b.client,
               f"must be in 0..{c.count - 1}: the client this edge host is (pipeline_backend.role=edge with "
               f"clients.count={c.count})")
    else:
        _check(b.client is None, "pipeline_backend.client", b.client,
               "must be null: only an edge host of many edges (pipeline_backend.role=edge, clients=many) "
               "is a client")


def _data_name(d: DictConfig) -> None:
    """data.name labels the run in logs, HParams and reports: the name of what `_target_` loads."""
    target = str(d._target_)
    loads = target.rpartition(".")[2]
    _check(d.name == loads, "data.name", d.name,
           f"must be {loads!r}, the name of data._target_ ({target}), so that the label says what is loaded")


def _warmup(s: DictConfig) -> None:
    """A warm-up longer than the run is said, not refused: the default 20 outlasts every short run."""
    if s.warmup_epochs > s.epochs:
        log.warning(f"schedule.warmup_epochs={s.warmup_epochs} exceeds schedule.epochs={s.epochs}: the "
                    f"warm-up never ends (the learning rate stays below {s.epochs}/{s.warmup_epochs} of "
                    f"schedule.lr={s.lr:g})")


def _writable_dir(key: str, path: str) -> None:
    """A folder that can be created and written, checked before training (not at the first write)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        _check(False, key, path, f"cannot create or write a file there: {e.strerror or e}")


def _data_device(device: str) -> None:
    """data.device: one of DATA_DEVICES, and a GPU that torch sees."""
    kind, _, index = device.partition(":")
    ok = device in ("cpu", "cpu_resident", "cuda") or (kind == "cuda" and index.isdigit())
    _check(ok, "data.device", device, f"allowed: {DATA_DEVICES}")
    if kind == "cuda":
        count = torch.cuda.device_count()
        _check(count > int(index or 0), "data.device", device,
               f"no such CUDA GPU ({count} here): allowed here: cpu, cpu_resident"
               + (", cuda" if count else ""))


def _compressor(c: DictConfig) -> None:
    for key in ("ratio", "channel_ratio"):
        if key in c:
            _check(0 < c[key] <= 1, f"compressor.{key}", c[key], "must be in (0, 1]")
    for key in ("bits", "first_bits", "gradient_bits"):
        if c.get(key) is not None:
            _check(bits_in_range(c[key]), f"compressor.{key}", c[key], f"must be in 1..{MAX_BITS}")
    _check(c.warmup_epochs >= 0, "compressor.warmup_epochs", c.warmup_epochs,
           "must be >= 0 (epochs that send raw values)")
    if "cache_dtype" in c:
        _one_of(CacheDtype, "compressor.cache_dtype", c.cache_dtype)
    if c.get("cache_dir") is not None:
        _writable_dir("compressor.cache_dir", c.cache_dir)
    _compressor_keys(c)
    if c.error_feedback:
        _check(c.name not in ("none", "delta"), "compressor.error_feedback", c.error_feedback,
               f"compressor={c.name} has no quantization residual to carry: use it with a "
               f"quantizing or pruning compressor")


def _compressor_keys(c: DictConfig) -> None:
    """The keys of the quantizing options, randtopk's explore and every option's entropy stage."""
    if "rounding" in c:
        _one_of(Rounding, "compressor.rounding", c.rounding)
    if "scale" in c:
        _one_of(Scale, "compressor.scale", c.scale)
        _check(c.scale != "channel" or "ratio" not in c, "compressor.scale", c.scale,
               "allowed with pruning: tensor, group (the kept values are a flat list, without channels)")
    if "group_size" in c:
        _check(c.group_size >= 1, "compressor.group_size", c.group_size, "must be a positive int")
    if "explore" in c:
        _check(0 <= c.explore <= 1, "compressor.explore", c.explore, "must be in [0, 1]")
    if "entropy" in c:
        _one_of(EntropyMethod, "compressor.entropy", c.entropy)


def validate_partition(p: DictConfig, num_units: int) -> None:
    """The partition checks that need the model: the cloud keeps at least one unit per stage."""
    cloud = num_units - p.front - p.back
    _check(cloud >= 1, "partition.front+partition.back", p.front + p.back,
           f"must be < {num_units} (the model has {num_units} units; the cloud needs at least one)")
    _check(p.cloud_stages <= cloud, "partition.cloud_stages", p.cloud_stages,
           f"must be in 1..{cloud} (the cloud holds {cloud} units)")
