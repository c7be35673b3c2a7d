"""`rcbatch models`: the model catalogue: list it, show a model, add one from its schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import click

from rcbatch.config import load_settings
from rcbatch.errors import InputError
from rcbatch.runcomfy.catalogue import (
    MODELS,
    Catalogue,
    FieldSpec,
    ModelSpec,
    OutputKind,
    read_published,
    store_model,
    unknown_model_issue,
    use_models_dir,
)

_KIND_WORDS = {"string": "string", "integer": "integer", "number": "number",
               "boolean": "boolean", "array": "list"}


def _catalogue() -> tuple[Catalogue, Path]:
    """The catalogue with the user's models folder loaded, and that folder."""
    folder = load_settings().resolved_models_dir()
    return use_models_dir(folder), folder


@click.group("models", context_settings={"help_option_names": ["-h", "--help"]})
def models() -> None:
    """The model catalogue: the built-in models and the ones added with `models add`.

    User models live in RCBATCH_MODELS_DIR (default STATE_DIR/models); rows may name any
    catalogued model.
    """


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def list_models(as_json: bool) -> None:
    """Every catalogued model: id, kind of output, source (built-in or user)."""
    catalogue, folder = _catalogue()
    rows = [{"model": m, "kind": s.output_kind, "source": catalogue.source(m), "title": s.title}
            for m, s in catalogue.items()]
    for path, reason in catalogue.broken.items():
        click.echo(f"rcbatch: warning: skipped {path.name}: {reason}", err=True)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    width = max(len(r["model"]) for r in rows)
    for r in rows:
        click.echo(f"{r['model']:<{width}}  {r['kind']:<5}  {r['source']}")
    click.echo(f"user models folder: {folder}", err=True)


@models.command("show")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the model as JSON.")
def show(model: str, as_json: bool) -> None:
    """MODEL's fields: types, enums, limits, defaults and image rules."""
    catalogue, _ = _catalogue()
    if model not in catalogue:
        raise InputError(unknown_model_issue(model).message)
    spec = catalogue[model]
    if as_json:
        click.echo(json.dumps(describe_model(spec, catalogue), ensure_ascii=False, default=list))
        return
    for line in model_lines(spec, catalogue):
        click.echo(line)


@models.command("add")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--id", "model_id", metavar="MODEL",
              help="The model's endpoint id, when FILE does not name it (a bare schema).")
@click.option("--output", type=click.Choice(["image", "video"]),
              help="What the model makes, when its output schema and id do not tell.")
@click.option("--replace", is_flag=True, help="Overwrite a user model of the same id.")
def add(file: Path, model_id: str | None, output: str | None, replace: bool) -> None:
    """Check FILE (a saved model API page or its input-schema JSON) and add it.

    A schema rcbatch cannot check completely is refused with the reason (exit 2).
    """
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{file}: cannot read: {exc}") from None
    published = read_published(text, source=str(file), model_id=model_id,
                               output=cast("OutputKind | None", output))
    catalogue, folder = _catalogue()
    path = store_model(published, folder, catalogue=catalogue, replace=replace)
    use_models_dir(folder)
    spec = published.spec
    click.echo(f"added {spec.model_id} ({spec.output_kind}, {len(spec.fields)} fields) "
               f"to {path}")


def model_lines(spec: ModelSpec, catalogue: Catalogue = MODELS) -> list[str]:
    """A model as text: a header, then each field with its rules."""
    title = f" ({spec.title})" if spec.title else ""
    lines = [f"{spec.model_id}{title}",
             f"  makes: {spec.output_kind} ({', '.join(spec.outputs) or spec.output_kind})",
             f"  source: {catalogue.source(spec.model_id)}", "  fields:"]
    for field in spec.fields.values():
        lines.append(f"    {field.name}: {field_summary(field)}")
        lines.extend(f"      rule: {rule}" for rule in field_rules(field))
    return lines


def field_summary(field: FieldSpec) -> str:
    """`string, required, at most 800 characters, default '...'` and the like."""
    kind = "list of image URLs" if field.item_format == "image_uri" else _KIND_WORDS[field.kind]
    parts = [kind, "required" if field.required else "optional"]
    if field.enum is not None:
        parts.append("one of " + ", ".join(_show(v) for v in field.enum))
    if field.minimum is not None or field.maximum is not None:
        parts.append(f"from {_show(field.minimum, '-inf')} to {_show(field.maximum, 'inf')}")
    if field.max_length is not None:
        parts.append(f"at most {field.max_length} characters")
    if field.min_items is not None or field.max_items is not None:
        parts.append(f"{_show(field.min_items, '0')} to {_show(field.max_items, 'any')} items")
    if field.image_formats:
        parts.append("formats " + "/".join(field.image_formats))
    if field.default is not None:
        default = list(field.default) if isinstance(field.default, tuple) else field.default
        parts.append(f"default {_show(default)}")
    return ", ".join(parts)


def field_rules(field: FieldSpec) -> list[str]:
    """The image rules (each image must keep them) and the description-only limits."""
    rules = []
    for rule in field.image_rules:
        also = (f" (its message reads {rule.message_rule} {rule.message_value:g}: between the "
                f"two only warns)" if rule.message_rule is not None
                and rule.message_value is not None else "")
        rules.append(f"{rule.rule} {rule.value:g}: {rule.message}{also}")
    rules.extend(f"warning only: {limit.message}" for limit in field.soft_limits)
    return rules


def describe_model(spec: ModelSpec, catalogue: Catalogue = MODELS) -> dict[str, Any]:
    """A model as JSON: id, kind, source and each field's declared rules."""
    return {"model": spec.model_id, "title": spec.title, "kind": spec.output_kind,
            "outputs": list(spec.outputs), "source": catalogue.source(spec.model_id),
            "fields": [{"name": f.name, "type": f.kind, "required": f.required,
                        "default": f.default, "enum": f.enum, "minimum": f.minimum,
                        "maximum": f.maximum, "max_length": f.max_length,
                        "min_items": f.min_items, "max_items": f.max_items,
                        "item_format": f.item_format,
                        "rules": field_rules(f)} for f in spec.fields.values()]}


def _show(value: Any, none: str = "none") -> str:
    if value is None:
        return none
    return json.dumps(value, ensure_ascii=False)
