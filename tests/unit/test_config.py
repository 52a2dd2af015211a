"""Unit tests for mongoferry.infra.config: defaults → YAML file → MONGOFERRY_* env → flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mongoferry.core.errors import EXIT_USAGE, UsageError
from mongoferry.infra import config
from mongoferry.infra.config import ConnectionSettings, CopySettings, load_settings, read_config_file


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MONGOFERRY_* variable of the outer environment may leak into a test."""
    for name in list(os.environ):
        if name.upper().startswith("MONGOFERRY_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "mongoferry.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(flags: dict[str, Any], path: Path | None = None) -> UsageError:
    with pytest.raises(UsageError) as excinfo:
        load_settings(CopySettings, flags, path)
    err = excinfo.value
    assert err.exit_code == EXIT_USAGE == 2
    assert err.hint
    return err


# ---------------------------------------------------------------- layers and precedence


def test_defaults() -> None:
    s = load_settings(CopySettings, {})
    assert s.workers == "auto" and s.readers == 4 and s.ranges == "auto"
    assert s.batch_size == 1000
    assert s.partition_docs == 50_000
    assert s.drop_dst is False
    assert s.src is None and s.dst is None and s.meta is None
    assert s.meta_db == "mongoferry_meta"
    assert s.include == [] and s.exclude == [] and s.rename == []
    assert s.log_format == "auto"
    assert s.log_level == "info"


def test_yaml_overrides_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 8\nbatch_size: 500\nsrc: mongodb://a\nlog_format: json\n")
    s = load_settings(CopySettings, {}, path)
    assert (s.workers, s.batch_size, s.src, s.log_format) == (8, 500, "mongodb://a", "json")
    assert s.partition_docs == 50_000, "options absent from the file keep their default"


def test_env_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "workers: 8\nbatch_size: 500\n")
    monkeypatch.setenv("MONGOFERRY_WORKERS", "12")
    s = load_settings(CopySettings, {}, path)
    assert s.workers == 12
    assert s.batch_size == 500


def test_env_overrides_defaults_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGOFERRY_DROP_DST", "true")
    monkeypatch.setenv("MONGOFERRY_SRC", "mongodb://env-host")
    s = load_settings(CopySettings, {})
    assert s.drop_dst is True
    assert s.src == "mongodb://env-host"


def test_flags_override_env_and_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "workers: 8\nbatch_size: 500\npartition_docs: 2000\n")
    monkeypatch.setenv("MONGOFERRY_WORKERS", "12")
    monkeypatch.setenv("MONGOFERRY_BATCH_SIZE", "700")
    s = load_settings(CopySettings, {"workers": 16}, path)
    assert s.workers == 16, "flag beats env and file"
    assert s.batch_size == 700, "env beats file"
    assert s.partition_docs == 2000, "file beats default"
    assert s.drop_dst is False, "default when no layer sets it"


def test_flags_override_yaml_without_env(tmp_path: Path) -> None:
    path = write(tmp_path, "drop_dst: true\ninclude: [a, b]\n")
    s = load_settings(CopySettings, {"drop_dst": False, "include": ["c"]}, path)
    assert s.drop_dst is False
    assert s.include == ["c"]


def test_flags_only_layer() -> None:
    s = load_settings(CopySettings, {"src": "mongodb://s", "dst": "mongodb://d", "workers": 2})
    assert (s.src, s.dst, s.workers) == ("mongodb://s", "mongodb://d", 2)


def test_file_layer_does_not_outlive_load(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 9\n")
    assert load_settings(CopySettings, {}, path).workers == 9
    assert CopySettings not in config._FILE_VALUES
    assert load_settings(CopySettings, {}).workers == "auto", "a later load without --config sees no file values"


def test_file_layer_is_removed_even_after_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 0\n")
    load_error({}, path)
    assert CopySettings not in config._FILE_VALUES
    assert load_settings(CopySettings, {}).workers == "auto"


def test_connection_settings_reject_copy_options(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 3\n")
    with pytest.raises(UsageError) as excinfo:
        load_settings(ConnectionSettings, {}, path)
    assert "'workers'" in excinfo.value.message


# ---------------------------------------------------------------- lists


def test_comma_list_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGOFERRY_INCLUDE", "shop, crm.leads ,,logs")
    monkeypatch.setenv("MONGOFERRY_EXCLUDE", "logs.debug")
    monkeypatch.setenv("MONGOFERRY_RENAME", "shop=store,crm.leads=sales.leads")
    s = load_settings(CopySettings, {})
    assert s.include == ["shop", "crm.leads", "logs"]
    assert s.exclude == ["logs.debug"]
    assert s.rename == ["shop=store", "crm.leads=sales.leads"]


def test_comma_list_from_yaml_string(tmp_path: Path) -> None:
    path = write(tmp_path, "include: shop, crm.leads\nexclude: logs\n")
    s = load_settings(CopySettings, {}, path)
    assert s.include == ["shop", "crm.leads"]
    assert s.exclude == ["logs"]


def test_real_list_from_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "include:\n  - shop\n  - crm.leads\nrename: [shop=store]\n")
    s = load_settings(CopySettings, {}, path)
    assert s.include == ["shop", "crm.leads"]
    assert s.rename == ["shop=store"]


def test_empty_env_list_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGOFERRY_INCLUDE", "")
    assert load_settings(CopySettings, {}).include == []


def test_env_list_overrides_yaml_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "include: [a, b]\n")
    monkeypatch.setenv("MONGOFERRY_INCLUDE", "c,d")
    assert load_settings(CopySettings, {}, path).include == ["c", "d"]


# ---------------------------------------------------------------- YAML keys


def test_dashes_in_yaml_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "drop-dst: true\nbatch-size: 250\npartition-docs: 1000\nmeta-db: jobs\nlog-format: text\n")
    s = load_settings(CopySettings, {}, path)
    assert s.drop_dst is True
    assert s.batch_size == 250
    assert s.partition_docs == 1000
    assert s.meta_db == "jobs"
    assert s.log_format == "text"


def test_read_config_file_normalises_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "drop-dst: true\nbatch_size: 5\n")
    assert read_config_file(path) == {"drop_dst": True, "batch_size": 5}


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_config_file_means_no_values(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert read_config_file(path) == {}
    assert load_settings(CopySettings, {}, path).workers == "auto"


# ---------------------------------------------------------------- errors


def test_unknown_option_in_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 2\ncolour: blue\n")
    err = load_error({}, path)
    assert "unknown option" in err.message
    assert "'colour'" in err.message


def test_unknown_dashed_option_in_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "max-speed: 3\n")
    err = load_error({}, path)
    assert "unknown option" in err.message
    assert "max_speed" in err.message or "max-speed" in err.message


def test_every_problem_of_a_config_file_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 0\ncolour: blue\nlog_format: xml\nbatch_size: -1\n")
    err = load_error({}, path)
    assert err.message.startswith("4 problems: ")
    for needle in ("unknown option 'colour'", "invalid value for 'workers'", "invalid value for 'log_format'",
                   "invalid value for 'batch_size'"):
        assert needle in err.message
    assert "\n" not in err.message  # still one line


def test_unknown_flag() -> None:
    err = load_error({"turbo": True})
    assert "unknown option 'turbo'" in err.message


@pytest.mark.parametrize(
    ("yaml_text", "option"),
    [
        ("workers: 0\n", "workers"),
        ("workers: 65\n", "workers"),
        ('workers: "x"\n', "workers"),
        ("workers: x\n", "workers"),
        ("batch_size: 0\n", "batch_size"),
        ("partition-docs: 99\n", "partition_docs"),
        ("log_format: xml\n", "log_format"),
        ("log_level: loud\n", "log_level"),
        ("drop_dst: maybe\n", "drop_dst"),
    ],
)
def test_invalid_value_in_yaml(tmp_path: Path, yaml_text: str, option: str) -> None:
    err = load_error({}, write(tmp_path, yaml_text))
    assert f"invalid value for {option!r}" in err.message


def test_invalid_value_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGOFERRY_WORKERS", "many")
    err = load_error({})
    assert "invalid value for 'workers'" in err.message


def test_invalid_value_in_flags() -> None:
    err = load_error({"workers": 0})
    assert "invalid value for 'workers' (--workers / MONGOFERRY_WORKERS)" in err.message


def test_an_env_only_setting_is_named_without_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGOFERRY_AUTO_GAIN", "-1")
    err = load_error({})
    assert "invalid value for 'auto_gain' (MONGOFERRY_AUTO_GAIN)" in err.message
    assert "--auto-gain" not in err.message  # there is no such flag


def test_valid_flag_repairs_invalid_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 0\n")
    assert load_settings(CopySettings, {"workers": 3}, path).workers == 3


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    err = load_error({}, path)
    assert "cannot read config file" in err.message
    assert str(path) in err.message
    assert "No such file" in err.message


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    err = load_error({}, tmp_path)
    assert "cannot read config file" in err.message
    assert str(tmp_path) in err.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("workers: 4\nbatch-size: a: b\n", 2),
        ("workers: [1, 2\n", None),
        ("a: 1\n\tb: 2\n", None),
    ],
)
def test_invalid_yaml(tmp_path: Path, text: str, line: int | None) -> None:
    path = write(tmp_path, text)
    err = load_error({}, path)
    assert "is not valid YAML" in err.message
    assert str(path) in err.message
    if line is not None:
        assert f"at line {line}" in err.message


@pytest.mark.parametrize("text", ["- workers\n- 4\n", "just a string\n", "42\n", "[workers, 4]\n"])
def test_non_mapping_yaml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    err = load_error({}, path)
    assert "must be a mapping" in err.message
    assert str(path) in err.message


def test_read_config_file_errors_have_usage_exit_code(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.yaml", write(tmp_path, "a: [", "bad.yaml"), write(tmp_path, "- 1", "list.yaml")):
        with pytest.raises(UsageError) as excinfo:
            read_config_file(path)
        assert excinfo.value.exit_code == 2
