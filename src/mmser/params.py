"""Typed, validated views of `params.yaml`: one dataclass per section, one loader."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from mmser.errors import UserError


class ParamsError(UserError, ValueError):
    """A key of params.yaml is missing, unknown, or has a value that is not allowed."""


@dataclasses.dataclass(frozen=True)
class BaseParams:
    seed: int
    classes: list[str]
    sample_rate: int


@dataclasses.dataclass(frozen=True)
class DemoParams:
    build: list[str]
    utterances_per_speaker: int


@dataclasses.dataclass(frozen=True)
class DataParams:
    source: Literal["demo", "iemocap", "manifest"]
    root: str
    manifest: str
    label_set: Literal["paper4", "six"]
    dialogs: Literal["both", "improvised", "scripted"]
    labels: dict[str, str]
    short_clips: Literal["pad", "drop"]
    min_duration: float
    check_counts: bool


@dataclasses.dataclass(frozen=True)
class SplitParams:
    protocol: Literal["loso", "lospo", "random", "speaker_kfold"]
    test_fraction: float
    val_fraction: float
    val_speakers: float
    folds: int


@dataclasses.dataclass(frozen=True)
class AsrParams:
    mode: Literal["given", "asr", "asr_if_missing"]
    model: str
    language: str | None
    beam_size: int
    compute_type: Literal["int8", "int8_float32", "float32", "float16", "int8_float16"]
    device: str


@dataclasses.dataclass(frozen=True)
class ExtractTextParams:
    model: str
    pooling: Literal["mean", "cls", "pooler"]
    max_length: int
    batch_size: int
    device: str
    precision: Literal["auto", "fp32", "bf16"]


@dataclasses.dataclass(frozen=True)
class ExtractAudioParams:
    encoder: Literal["egemaps", "vggish", "ssl", "whisper"]
    vggish_weights_dir: str | None
    postprocess: bool
    ssl_model: str
    ssl_layer: Literal["last", "all"] | int
    whisper_model: str
    whisper_pooling: Literal["mean", "mean_std", "frames"]
    whisper_compute_type: Literal["int8", "int8_float32", "float32", "float16", "int8_float16"]
    batch_size: int
    workers: int
    device: str
    precision: Literal["auto", "fp32", "bf16"]


@dataclasses.dataclass(frozen=True)
class TrainParams:
    folds: list[int]
    heads: list[Literal["linear", "server", "gated", "late"]]
    weight_decay: list[float]
    audio_pooling: Literal["sum", "mean", "mean_std", "attention"]
    standardize: bool
    speaker_norm: bool
    baseline_c: list[float]
    class_weights: bool
    early_stopping: int
    text_proj_dim: int
    hidden_dim: int
    dropout: float
    lr: float
    step_size: int
    gamma: float
    epochs: int
    batch_size: int


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    bootstrap_resamples: int


@dataclasses.dataclass(frozen=True)
class TrackingParams:
    experiment: str


@dataclasses.dataclass(frozen=True)
class DistributedParams:
    accelerator: Literal["cpu", "gpu", "auto"]
    devices: int
    num_nodes: int
    strategy: Literal["single", "ddp", "ddp_spawn"]


SECTIONS: dict[str, type] = {
    "base": BaseParams,
    "demo": DemoParams,
    "data": DataParams,
    "split": SplitParams,
    "asr": AsrParams,
    "extract_text": ExtractTextParams,
    "extract_audio": ExtractAudioParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "tracking": TrackingParams,
    "distributed": DistributedParams,
}

MODALITIES = ("text", "audio", "fusion")


def _type_name(tp: Any) -> str:
    """A readable name for a type annotation, for error messages."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _check(key: str, value: Any, tp: Any) -> Any:
    """Return `value` if it fits annotation `tp`, else raise ParamsError naming `key`."""
    origin = get_origin(tp)
    bad = ParamsError(f"params.yaml: {key} = {value!r} is not allowed; expected {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _check(key, value, option)
            except ParamsError:
                continue
        raise bad
    if tp is type(None):
        if value is not None:
            raise bad
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item_tp,) = get_args(tp)
        return [_check(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        k_tp, v_tp = get_args(tp)
        return {_check(f"{key}.<key>", k, k_tp): _check(f"{key}.{k}", v, v_tp) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is int or tp is bool or tp is str:
        # bool is a subclass of int: keep `epochs: true` from passing as 1.
        if type(value) is not tp:
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def parse_section(name: str, raw: Any) -> Any:
    """Validate one params section and return its dataclass."""
    cls = SECTIONS[name]
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: section '{name}' must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key {name}.{unknown[0]}; allowed keys in '{name}': {', '.join(fields) or '(none)'}"
        )
    missing = [f for f in fields if f not in raw]
    if missing:
        raise ParamsError(f"params.yaml: missing key {name}.{missing[0]} ({_type_name(hints[missing[0]])})")
    values = {f: _check(f"{name}.{f}", raw[f], hints[f]) for f in fields}
    params = cls(**values)
    _check_values(name, params)
    return params


def _check_values(name: str, p: Any) -> None:
    """Range checks that a type alone cannot express."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ParamsError(f"params.yaml: {name}.{key} = {getattr(p, key)!r} is not allowed; {what}")

    if name == "base":
        need(len(p.classes) >= 2 and len(set(p.classes)) == len(p.classes), "classes", "need >= 2 distinct classes")
        need(p.sample_rate == 16000, "sample_rate", "the encoders expect 16000")
    elif name == "demo":
        need(p.utterances_per_speaker >= 4, "utterances_per_speaker", "need >= 4")
        need(all(name and "/" not in name and name not in (".", "..") for name in p.build), "build",
             "list folder names under data/ (e.g. [demo]), or [] for no demo corpus")
    elif name == "split":
        need(0.0 < p.test_fraction < 1.0, "test_fraction", "need 0 < test_fraction < 1")
        need(0.0 < p.val_fraction < 1.0, "val_fraction", "need 0 < val_fraction < 1")
        need(0.0 < p.val_speakers < 1.0, "val_speakers", "need 0 < val_speakers < 1 (a fraction of training speakers)")
        need(p.folds >= 2, "folds", "need >= 2")
    elif name == "asr":
        need(p.beam_size >= 1, "beam_size", "need >= 1 (1 = greedy)")
        need(p.language is None or (p.language.isalpha() and 2 <= len(p.language) <= 3), "language",
             "use null (detected per clip) or a language code such as en")
        need(p.device in ("auto", "cpu") or p.device.startswith("cuda"), "device", "use auto, cpu or cuda[:N]")
    elif name == "extract_text":
        need(p.max_length >= 8, "max_length", "need >= 8")
        need(p.batch_size >= 1, "batch_size", "need >= 1")
        need(p.device in ("auto", "cpu") or p.device.startswith("cuda"), "device", "use auto, cpu or cuda[:N]")
    elif name == "extract_audio":
        need(p.batch_size >= 1, "batch_size", "need >= 1")
        need(p.workers >= 0, "workers", "need >= 0 (0 = decode in the main process)")
        need(not isinstance(p.ssl_layer, int) or p.ssl_layer >= 0, "ssl_layer",
             "use last, all, or a layer index >= 0 (0 = the transformer's input)")
        need(p.device in ("auto", "cpu") or p.device.startswith("cuda"), "device", "use auto, cpu or cuda[:N]")
    elif name == "evaluate":
        need(p.bootstrap_resamples >= 100, "bootstrap_resamples", "need >= 100 for a usable interval")
    elif name == "data":
        need(p.min_duration >= 0.0, "min_duration", "need >= 0")
    elif name == "distributed":
        need(p.devices >= 1, "devices", "need >= 1 (processes per node)")
        need(p.num_nodes >= 1, "num_nodes", "need >= 1")
        need(p.strategy != "single" or (p.devices == 1 and p.num_nodes == 1), "strategy",
             "single runs one process: set devices: 1 and num_nodes: 1, or strategy: ddp / ddp_spawn")
        need(p.strategy != "ddp_spawn" or p.num_nodes == 1, "strategy",
             "ddp_spawn starts its processes on one node; use ddp (or torchrun) across nodes")
    elif name == "train":
        need(len(p.heads) >= 1 and len(set(p.heads)) == len(p.heads), "heads", "need a non-empty list of distinct heads")
        need(len(p.weight_decay) >= 1 and len(set(p.weight_decay)) == len(p.weight_decay)
             and min(p.weight_decay) >= 0, "weight_decay", "need a non-empty list of distinct values >= 0")
        need(len(p.folds) >= 1 and len(set(p.folds)) == len(p.folds) and min(p.folds) >= 1, "folds",
             "need a non-empty list of distinct fold numbers >= 1")
        need(len(p.baseline_c) >= 1 and min(p.baseline_c) > 0, "baseline_c", "need a non-empty list of C > 0")
        need(p.early_stopping >= 0, "early_stopping", "need >= 0 (0 = off)")
        need(0.0 <= p.dropout < 1.0, "dropout", "need 0 <= dropout < 1")
        need(p.lr > 0, "lr", "need > 0")
        need(p.epochs >= 1, "epochs", "need >= 1")
        need(p.batch_size >= 1, "batch_size", "need >= 1")
        need(p.step_size >= 1, "step_size", "need >= 1")
        need(0.0 < p.gamma <= 1.0, "gamma", "need 0 < gamma <= 1")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Load and validate every section of params.yaml (unknown sections are an error)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected sections (a mapping), got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"params.yaml: unknown section '{unknown[0]}'; allowed: {', '.join(SECTIONS)}")
    missing = [s for s in SECTIONS if s not in raw and dataclasses.fields(SECTIONS[s])]
    if missing:
        raise ParamsError(f"params.yaml: missing section '{missing[0]}'")
    return {name: parse_section(name, raw.get(name)) for name in SECTIONS}


def flatten(section: str, params: Any) -> dict[str, str]:
    """Flat `section.key` -> string view of a params dataclass, for MLflow."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, dict):
            for k, v in value.items():
                out[f"{section}.{f.name}.{k}"] = str(v)
        else:
            out[f"{section}.{f.name}"] = str(value)
    return out


def flatten_all(params: dict[str, Any]) -> dict[str, str]:
    """Every section flattened (`section.key` -> str), for the pipeline's parent MLflow run."""
    return {k: v for name, section in params.items() for k, v in flatten(name, section).items()}
