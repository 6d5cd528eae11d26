"""The Train tab's Advanced form: one field per TrainConfig key, and the conversions between
a field's raw value and the config value (no gradio here; train_tab.py builds the fields).

    field_specs()        FieldSpec per leaf key of TrainConfig, in declaration order
    field_value(spec, raw)     form value -> config value   ("0.9, 0.999" -> [0.9, 0.999])
    display_value(spec, value) config value -> form value   (the inverse)

Keys in app.jobs.recipe.WORKER_KEYS are shown read-only; type and range errors are left to
TrainConfig (app.jobs.recipe.build_job_config), which names the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from app.jobs.recipe import WORKER_KEYS
from sam3_lora.config import DEVICES, MASK_LOSS_MODES, PRECISIONS, ConfigError, TrainConfig, config_help
from sam3_lora.schedule import SCHEDULES

# An optional boolean (gradient_checkpointing: unset means "decided by the preset") is a
# dropdown; "auto" is null.
AUTO_BOOL = ("auto", "true", "false")
CHOICES: dict[str, tuple[str, ...]] = {
    "schedule.decay": tuple(SCHEDULES), "loss.mask_mode": MASK_LOSS_MODES,
    "precision": PRECISIONS, "device": DEVICES,
}


@dataclass(frozen=True)
class FieldSpec:
    """One config key as a form field. kind: int | float (number; `optional`: may be empty), bool,
    text | choice | list (comma-separated values) | text_or_list (one name, or several with commas)."""

    key: str
    kind: str
    help: str
    optional: bool = False
    choices: tuple[str, ...] = ()

    @property
    def editable(self) -> bool:
        return self.key not in WORKER_KEYS

    @property
    def as_text(self) -> bool:
        """Edited in a text box: every non-number kind, and optional numbers, whose empty field
        means null (a browser number field sends 0 when emptied, and 0 means something for
        data.val_fraction)."""
        return self.kind not in ("int", "float", "bool", "choice") or self.optional


def _kind(hint) -> tuple[str, bool]:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    optional = type(None) in options
    options = [option for option in options if option is not type(None)]
    if len(options) == 2 and str in options:
        return "text_or_list", optional
    [only] = options
    if typing.get_origin(only) is tuple:
        return "list", optional
    return {bool: "bool", int: "int", float: "float", str: "text"}[only], optional


def field_specs(cls=TrainConfig, prefix: str = "") -> list[FieldSpec]:
    """A FieldSpec per leaf key of TrainConfig, in declaration order (sections walked in place)."""
    helps, hints, specs = config_help(), typing.get_type_hints(cls), []
    for item in dataclasses.fields(cls):
        key, hint = f"{prefix}{item.name}", hints[item.name]
        if dataclasses.is_dataclass(hint):
            specs.extend(field_specs(hint, f"{key}."))
            continue
        kind, optional = _kind(hint)
        choices = CHOICES.get(key, AUTO_BOOL if (kind, optional) == ("bool", True) else ())
        if choices:
            kind = "choice"
        specs.append(FieldSpec(key, kind, helps[key], optional, choices))
    return specs


def editable_specs() -> list[FieldSpec]:
    """The keys a user may set, in form order (every key but WORKER_KEYS)."""
    return [spec for spec in field_specs() if spec.editable]


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text  # a name in a component list, or a typo TrainConfig names


def field_value(spec: FieldSpec, raw: Any) -> Any:
    """A form field's raw value as the config value of `spec.key`.

    Numbers: None / "" -> None (refused unless optional), 3.0 -> 3 for int keys. Lists:
    "0.9, 0.999" or "[0.9, 0.999]" -> [0.9, 0.999]. text_or_list: "decoder" stays a name,
    "vision, text" becomes a list. Type and range errors are left to TrainConfig, which names the key.
    """
    if spec.kind in ("int", "float"):
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            if not spec.optional:
                raise ConfigError(f"{spec.key}: is empty; give a number")
            return None
        value = _number(raw.strip()) if isinstance(raw, str) else raw
        if spec.kind == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    if spec.kind == "bool":
        return raw
    if spec.choices == AUTO_BOOL:
        return {"auto": None, "true": True, "false": False}.get(raw, raw)  # anything else: TrainConfig names it
    text = "" if raw is None else str(raw).strip()
    if spec.kind == "list" or (spec.kind == "text_or_list" and ("," in text or text.startswith("["))):
        items = [item.strip() for item in text.strip("[]").split(",") if item.strip()]
        if not items:
            raise ConfigError(f"{spec.key}: is empty; give values separated by commas")
        return [_number(item) for item in items] if spec.kind == "list" else items
    return text


def display_value(spec: FieldSpec, value: Any) -> Any:
    """A config value as its form field shows it (the inverse of field_value): lists joined by ", ",
    optional numbers as text ("" = null; see FieldSpec.as_text), None as ""."""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    if spec.choices == AUTO_BOOL:
        return "auto" if value is None else str(bool(value)).lower()
    if value is None:
        return None if spec.kind in ("int", "float") and not spec.optional else ""
    return str(value) if spec.as_text and spec.kind in ("int", "float") else value


def form_overrides(raw_values: dict[str, Any]) -> dict[str, Any]:
    """{dotted key: raw form value} -> {dotted key: config value}; unknown and worker keys are
    passed through for build_job_config to refuse by name."""
    specs = {spec.key: spec for spec in field_specs()}
    return {key: field_value(specs[key], raw) if key in specs else raw for key, raw in raw_values.items()}
