"""params.yaml loading: the real file validates; typos, wrong types and out-of-range values fail by name."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmser.params import SECTIONS, ParamsError, TrainParams, load_params

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The repository's params.yaml as plain YAML data."""
    return yaml.safe_load(PARAMS.read_text())


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _variant(tmp_path: Path, raw: dict[str, Any], section: str, key: str, value: Any) -> Path:
    data = copy.deepcopy(raw)
    data[section][key] = value
    return _write(tmp_path, data)


def test_real_params_load_into_typed_sections() -> None:
    params = load_params(PARAMS)
    assert set(params) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        assert isinstance(params[name], cls)
    assert params["base"].sample_rate == 16000
    assert len(params["base"].classes) >= 2
    assert isinstance(params["train"].lr, float)
    assert isinstance(params["train"].epochs, int)


def test_roundtrip_through_yaml_is_identical(tmp_path: Path, raw: dict[str, Any]) -> None:
    assert load_params(_write(tmp_path, raw)) == load_params(PARAMS)


def test_mistyped_key_names_it_and_lists_allowed_keys(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    data["train"]["epoch"] = data["train"].pop("epochs")
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, data))
    message = str(err.value)
    assert "train.epoch" in message
    for field in dataclasses.fields(TrainParams):
        assert field.name in message


@pytest.mark.parametrize("value", ["ten", True, 10.5])
def test_wrong_type_names_key_and_expected_type(tmp_path: Path, raw: dict[str, Any], value: Any) -> None:
    with pytest.raises(ParamsError) as err:
        load_params(_variant(tmp_path, raw, "train", "epochs", value))
    message = str(err.value)
    assert "train.epochs" in message
    assert "expected int" in message
    assert repr(value) in message


def test_bool_is_not_accepted_as_float(tmp_path: Path, raw: dict[str, Any]) -> None:
    with pytest.raises(ParamsError, match=r"train\.dropout .*expected float"):
        load_params(_variant(tmp_path, raw, "train", "dropout", False))


def test_int_is_accepted_as_float(tmp_path: Path, raw: dict[str, Any]) -> None:
    params = load_params(_variant(tmp_path, raw, "train", "gamma", 1))
    assert params["train"].gamma == 1.0
    assert isinstance(params["train"].gamma, float)


def test_wrong_literal_lists_allowed_values(tmp_path: Path, raw: dict[str, Any]) -> None:
    with pytest.raises(ParamsError) as err:
        load_params(_variant(tmp_path, raw, "extract_audio", "encoder", "wav2vec"))
    message = str(err.value)
    assert "extract_audio.encoder" in message
    assert "'wav2vec'" in message
    assert "'egemaps'" in message and "'vggish'" in message


def test_wrong_literal_inside_list_names_the_item(tmp_path: Path, raw: dict[str, Any]) -> None:
    with pytest.raises(ParamsError) as err:
        load_params(_variant(tmp_path, raw, "train", "heads", ["linear", "transformer"]))
    message = str(err.value)
    assert "train.heads[1]" in message
    assert "'gated'" in message


def test_optional_value_accepts_null_and_string(tmp_path: Path, raw: dict[str, Any]) -> None:
    assert load_params(_variant(tmp_path, raw, "extract_audio", "vggish_weights_dir", None))[
        "extract_audio"].vggish_weights_dir is None
    assert load_params(_variant(tmp_path, raw, "extract_audio", "vggish_weights_dir", "weights/"))[
        "extract_audio"].vggish_weights_dir == "weights/"
    with pytest.raises(ParamsError, match=r"extract_audio\.vggish_weights_dir .*str or null"):
        load_params(_variant(tmp_path, raw, "extract_audio", "vggish_weights_dir", 3))


@pytest.mark.parametrize(("section", "key", "value"), [
    ("train", "dropout", 1.5),
    ("train", "dropout", -0.1),
    ("train", "lr", 0.0),
    ("train", "epochs", 0),
    ("train", "gamma", 1.5),
    ("train", "heads", []),
    ("train", "heads", ["server", "server"]),
    ("train", "weight_decay", [-0.1]),
    ("train", "weight_decay", []),
    ("train", "baseline_c", [0.0]),
    ("split", "val_speakers", 1.0),
    ("split", "test_fraction", 1.0),
    ("split", "folds", 1),
    ("base", "sample_rate", 44100),
    ("base", "classes", ["ang"]),
    ("evaluate", "bootstrap_resamples", 10),
    ("extract_text", "device", "tpu"),
    ("data", "min_duration", -1.0),
    ("distributed", "devices", 0),
    ("distributed", "num_nodes", 0),
])
def test_range_checks_name_the_key(tmp_path: Path, raw: dict[str, Any], section: str, key: str,
                                   value: Any) -> None:
    with pytest.raises(ParamsError) as err:
        load_params(_variant(tmp_path, raw, section, key, value))
    assert f"{section}.{key}" in str(err.value)
    assert "not allowed" in str(err.value)


def test_distributed_strategy_must_fit_the_process_count(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    data["distributed"].update(strategy="single", devices=2)
    with pytest.raises(ParamsError, match=r"distributed.strategy = 'single' .* set devices: 1"):
        load_params(_write(tmp_path, data))
    data["distributed"].update(strategy="ddp_spawn", devices=1, num_nodes=2)
    with pytest.raises(ParamsError, match="ddp_spawn starts its processes on one node"):
        load_params(_write(tmp_path, data))
    data["distributed"].update(strategy="ddp")
    assert load_params(_write(tmp_path, data))["distributed"].num_nodes == 2


def test_unknown_section(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    data["trian"] = {"epochs": 3}
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, data))
    message = str(err.value)
    assert "unknown section 'trian'" in message
    for name in SECTIONS:
        assert name in message


def test_missing_section(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    del data["split"]
    with pytest.raises(ParamsError, match="missing section 'split'"):
        load_params(_write(tmp_path, data))


def test_missing_key_names_it_and_its_type(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    del data["split"]["folds"]
    with pytest.raises(ParamsError, match=r"missing key split\.folds \(int\)"):
        load_params(_write(tmp_path, data))


def test_section_that_is_not_a_mapping(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    data["evaluate"] = [1000]
    with pytest.raises(ParamsError, match="section 'evaluate' must be a mapping"):
        load_params(_write(tmp_path, data))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
