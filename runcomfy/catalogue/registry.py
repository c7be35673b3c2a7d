"""The catalogue of models: the built-in schema files, then the user's models folders.

Every model is a schema file (`schema.py` reads it). The built-in ones ship in
`runcomfy/catalogue/models/`; `rcbatch models add` stores the user's in the models folder
(`Settings.resolved_models_dir()`), which the catalogue takes as a parameter: this layer
reads no settings. A user model never replaces a built-in one of the same id.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Literal

from rcbatch.errors import InputError
from rcbatch.runcomfy.catalogue.schema import PublishedModel, spec_from_schema
from rcbatch.runcomfy.catalogue.spec import ModelSpec

Source = Literal["built-in", "user"]


def file_name(model_id: str) -> str:
    """The schema file name of a model: `bytedance/dreamina-4-0/edit` -> `bytedance--...json`."""
    return model_id.replace("/", "--") + ".json"


def read_schema_file(path: Path) -> ModelSpec:
    """The ModelSpec of one stored schema file (InputError naming the file and the reason)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read this model file: {exc}") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: a model file holds one JSON object")
    return spec_from_schema(document, source=str(path))


class Catalogue(Mapping[str, ModelSpec]):
    """Model id -> ModelSpec: the built-in models first, then those of the models folders.

    Files of a folder that cannot be read are kept out, with their reasons in `broken`.
    """

    def __init__(self, built_in: Iterable[ModelSpec] = ()) -> None:
        self._built_in = {spec.model_id: spec for spec in built_in}
        self._user: dict[str, ModelSpec] = {}
        self._files: dict[str, Path] = {}
        self.broken: dict[Path, str] = {}

    def __getitem__(self, model_id: str) -> ModelSpec:
        if model_id in self._built_in:
            return self._built_in[model_id]
        return self._user[model_id]

    def __iter__(self) -> Iterator[str]:
        yield from self._built_in
        yield from self._user

    def __len__(self) -> int:
        return len(self._built_in) + len(self._user)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._built_in or model_id in self._user

    def source(self, model_id: str) -> Source:
        """Where `model_id` comes from (KeyError when it is not catalogued)."""
        if model_id in self._built_in:
            return "built-in"
        if model_id in self._user:
            return "user"
        raise KeyError(model_id)

    def file_of(self, model_id: str) -> Path | None:
        """The user model's schema file (None for a built-in model)."""
        return self._files.get(model_id)

    def add_dir(self, folder: str | os.PathLike[str]) -> None:
        """Load (again) every `*.json` model of `folder`; a missing folder holds none."""
        folder = Path(folder)
        for model_id in [m for m, f in self._files.items() if f.parent == folder]:
            del self._user[model_id], self._files[model_id]
        self.broken = {p: r for p, r in self.broken.items() if p.parent != folder}
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            self._load_user_file(path)

    def _load_user_file(self, path: Path) -> None:
        try:
            spec = read_schema_file(path)
        except InputError as exc:
            self.broken[path] = str(exc)
            return
        if spec.model_id in self._built_in:
            self.broken[path] = f"{path}: {spec.model_id} is built in; this file is ignored"
        elif spec.model_id in self._user:
            self.broken[path] = (f"{path}: {spec.model_id} is already defined by "
                                 f"{self._files[spec.model_id]}; this file is ignored")
        else:
            self._user[spec.model_id] = spec
            self._files[spec.model_id] = path

    def closest(self, name: str, count: int = 3) -> list[str]:
        """The catalogued ids closest to `name`: ids ending with it first, then difflib's."""
        known = list(self)
        tail = name.strip("/")
        suffix = [m for m in known if tail and m.endswith(tail)]
        if suffix:
            return suffix[:count]
        close = difflib.get_close_matches(name, known, n=count, cutoff=0.6)
        if close:
            return close
        # the last segment alone ("text-to-video") often finds a model under another vendor
        last = {m.rsplit("/", 1)[-1]: m for m in known}
        found = difflib.get_close_matches(tail.rsplit("/", 1)[-1], list(last), n=count,
                                          cutoff=0.6)
        return [last[f] for f in found]


def built_in_models() -> tuple[ModelSpec, ...]:
    """The models shipped with rcbatch: the schema files of `runcomfy/catalogue/models/`."""
    folder = resources.files("rcbatch.runcomfy.catalogue") / "models"
    with resources.as_file(folder) as path:
        return tuple(read_schema_file(f) for f in sorted(path.glob("*.json")))


def load_catalogue(extra_dirs: Iterable[str | os.PathLike[str]] = (),
                   built_in: Iterable[ModelSpec] | None = None) -> Catalogue:
    """A new Catalogue of the built-in models and the models in each of `extra_dirs`."""
    catalogue = Catalogue(built_in_models() if built_in is None else built_in)
    for folder in extra_dirs:
        catalogue.add_dir(folder)
    return catalogue


def store_model(model: PublishedModel, folder: str | os.PathLike[str], *,
                catalogue: Catalogue, replace: bool = False) -> Path:
    """Write `model`'s schema into the models folder; InputError when its id is taken."""
    model_id = model.spec.model_id
    if model_id in catalogue and catalogue.source(model_id) == "built-in":
        raise InputError(f"{model_id} is a built-in model; it cannot be replaced")
    path = Path(folder) / file_name(model_id)
    if not replace and (model_id in catalogue or path.exists()):
        raise InputError(f"{model_id} is already in the catalogue ({path}); "
                         f"add it with --replace to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(model.document, ensure_ascii=False, indent=2) + "\n",
                       encoding="utf-8")
    partial.replace(path)  # a reader never sees half a file
    return path
