"""The configs' schemas: every key, its default and its check, defined once.

``cellseg/data/config.schema.yaml`` describes the workflow config (the
Snakefile validates with it) and holds the defaults of the options that the
command line and the stage functions share (:data:`DEFAULTS`);
``cellseg/data/training.schema.yaml`` describes the training config of
``cellseg train`` (:data:`TRAINING_DEFAULTS`). :func:`validate_config` and
:func:`validate_training_config` check a config against its schema, fill in
the defaults, and report the first bad key in one line.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema
import yaml

from cellseg.errors import ConfigError

DATA = Path(__file__).parent / "data"
#: The workflow config's schema.
CONFIG_SCHEMA = DATA / "config.schema.yaml"
#: The training config's schema.
TRAINING_SCHEMA = DATA / "training.schema.yaml"


@functools.cache
def load_schema(path: str | Path = CONFIG_SCHEMA) -> dict:
    """A schema file, read once (do not modify the dict returned).

    Examples
    --------
    >>> load_schema()["title"]
    'cellseg workflow config'
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)


def _top_defaults(schema: Mapping) -> dict[str, Any]:
    return {key: sub["default"] for key, sub in schema["properties"].items() if "default" in sub}


#: The default of every top-level key of the workflow config, from its schema.
#: The command line's options and the stage functions' keywords default to these.
DEFAULTS: Mapping[str, Any] = MappingProxyType(_top_defaults(load_schema(CONFIG_SCHEMA)))

#: The pattern that a scan's name matches (the schema's pattern for the keys of ``scans``).
SCAN_NAME_PATTERN: str = next(
    iter(load_schema(CONFIG_SCHEMA)["properties"]["scans"]["patternProperties"])
)


def default(key: str) -> Any:
    """The default of a top-level key of the workflow config.

    Examples
    --------
    >>> default("tile_size"), default("tiles_per_batch"), default("batch_size")
    (512, 16, 4)
    >>> default("tile_sise")
    Traceback (most recent call last):
    ...
    cellseg.errors.ConfigError: the config schema has no default for 'tile_sise'
    """
    try:
        return copy.deepcopy(DEFAULTS[key])
    except KeyError:
        raise ConfigError(f"the config schema has no default for {key!r}") from None


def _filling_validator(schema: Mapping) -> jsonschema.protocols.Validator:
    """A validator of `schema` that fills in each missing key's default as it goes.

    As ``snakemake.utils.validate`` does (the jsonschema FAQ's recipe), with a
    copy of each default, so that configs never share the schema's lists and dicts.
    """
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def properties(validator, props, instance, sub):
        if isinstance(instance, dict):
            for key, prop in props.items():
                if "default" in prop and key not in instance:
                    instance[key] = copy.deepcopy(prop["default"])
        yield from validate_properties(validator, props, instance, sub)

    return jsonschema.validators.extend(base, {"properties": properties})(schema)


def _first_error(schema: Mapping, config: dict) -> jsonschema.ValidationError | None:
    """Fill in `config`'s defaults and return its first error (validation stops there)."""
    for error in _filling_validator(schema).iter_errors(config):
        return error
    return None


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "top level"


def validate_config(config: dict) -> dict:
    """Check a workflow config against the schema and fill in its defaults.

    Parameters
    ----------
    config : dict
        The config as read from YAML; changed in place.

    Returns
    -------
    dict
        `config`, every key left out now at its default.

    Raises
    ------
    ConfigError
        At the first bad key, in one line: where, what, and where the keys are described.

    Examples
    --------
    >>> cfg = validate_config({"scans": {"a": {"path": "a.tif"}}})
    >>> cfg["tile_size"], cfg["scans"]["a"]["channel"]
    (512, None)
    >>> validate_config({"tile_sise": 256})
    Traceback (most recent call last):
    ...
    cellseg.errors.ConfigError: Invalid config (top level): Additional properties are not \
allowed ('tile_sise' was unexpected). The keys, their types and defaults are described in \
cellseg/data/config.schema.yaml and configs/config.yaml.
    """
    error = _first_error(load_schema(CONFIG_SCHEMA), config)
    if error is not None:
        raise ConfigError(
            f"Invalid config ({_where(error)}): {error.message}. "
            "The keys, their types and defaults are described in "
            "cellseg/data/config.schema.yaml and configs/config.yaml."
        )
    return config


def validate_training_config(raw: Mapping | None) -> dict:
    """Check a training config against its schema; return a copy with the defaults filled in.

    The sizes that depend on ``spatial_dims`` (``data.synthetic.shape``,
    ``validation.synthetic.shape``, ``training.patch``) stay ``None`` when not
    given; :func:`cellseg.segmentation.training.load_config` chooses them.

    Parameters
    ----------
    raw : mapping or None
        The training config as read from YAML.

    Returns
    -------
    dict
        A new config, every key left out at its default.

    Raises
    ------
    ConfigError
        At the first bad key, in one line: an unknown key with the known ones,
        or where and what is wrong.

    Examples
    --------
    >>> cfg = validate_training_config({"out": "models/mine", "training": {"epochs": 3}})
    >>> cfg["training"]["epochs"], cfg["training"]["batch_size"], cfg["training"]["max_minutes"]
    (3, 8, None)
    >>> validate_training_config({"out": "m", "data": {"synthetics": {}}})
    Traceback (most recent call last):
    ...
    cellseg.errors.ConfigError: unknown training config key 'data.synthetics'; known: \
folders, synthetic.
    >>> validate_training_config({"spatial_dims": 4, "out": "m"})
    Traceback (most recent call last):
    ...
    cellseg.errors.ConfigError: Invalid training config (spatial_dims): 4 is not one of [2, 3]. \
The keys, their types and defaults are described in cellseg/data/training.schema.yaml.
    """
    config = copy.deepcopy(dict(raw or {}))
    error = _first_error(load_schema(TRAINING_SCHEMA), config)
    if error is not None and error.validator == "additionalProperties":
        known = error.schema.get("properties", {})
        unknown = sorted(str(k) for k in error.instance if k not in known)
        prefix = "".join(f"{part}." for part in error.absolute_path)
        raise ConfigError(
            f"unknown training config key {prefix + unknown[0]!r}; "
            f"known: {', '.join(sorted(known))}."
        )
    if error is not None:
        raise ConfigError(
            f"Invalid training config ({_where(error)}): {error.message}. The keys, their "
            "types and defaults are described in cellseg/data/training.schema.yaml."
        )
    if not config["out"]:
        raise ConfigError("the training config needs `out`: the model folder to write.")
    return config


def _training_defaults() -> dict[str, Any]:
    config: dict[str, Any] = {}
    _first_error(load_schema(TRAINING_SCHEMA), config)
    return config


#: Every key of the training config at its default (``out`` has none: ``None``).
TRAINING_DEFAULTS: Mapping[str, Any] = MappingProxyType(_training_defaults())
