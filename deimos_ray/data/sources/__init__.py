"""Turn a source spec into a Ray Dataset with one schema (see ``base.py``).

Specs, detected from the path (a ``format:`` prefix overrides detection):

==================  ===========================================================
``digits``          scikit-learn's 8x8 digits with labels (built in; the default)
``file.npz``        an ``images`` array (N,H,W[,C]) with optional ``labels``/``ids``
``folder/``         image files below it, recursively; HiRISE and Galaxy Zoo layouts
                    are recognised by their label files
``archive.zip``     image members read in place (a HiRISE release zip is recognised)
``list.csv``        a manifest: a ``path`` column with optional id/label/group/metadata
``table.parquet``   a manifest (with ``path``) or a table of encoded image ``bytes``
==================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from deimos_ray.data.sources.archive import load_zip_source
from deimos_ray.data.sources.arrays import load_digits_source, load_npz_source
from deimos_ray.data.sources.base import IMAGE_EXTENSIONS, Source
from deimos_ray.data.sources.files import list_image_files, load_folder_source, load_manifest_source
from deimos_ray.data.sources.galaxy_zoo import is_galaxy_zoo, load_galaxy_zoo_source
from deimos_ray.data.sources.hirise import is_hirise, load_hirise_source
from deimos_ray.data.sources.parquet_images import image_bytes_column, load_parquet_images_source

LOADERS: dict[str, Callable[[str, object], Source]] = {
    "digits": load_digits_source,
    "npz": load_npz_source,
    "folder": load_folder_source,
    "manifest": load_manifest_source,
    "zip": load_zip_source,
    "hirise": load_hirise_source,
    "galaxy_zoo": load_galaxy_zoo_source,
    "parquet": load_parquet_images_source,
}
FORMATS = tuple(LOADERS)


def detect_format(spec: str) -> tuple[str, str]:
    """(format, location) of a spec, honouring an explicit ``format:`` prefix.

    Raises:
        ValueError: an unknown format prefix, or a file whose format cannot be told.
        FileNotFoundError: the path does not exist.
    """
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in FORMATS:
        if prefix != "digits" and not Path(rest).expanduser().exists():
            raise FileNotFoundError(f"data source {rest!r} does not exist")
        return prefix, str(Path(rest).expanduser()) if rest else rest
    if sep and len(prefix) > 1 and "/" not in prefix:
        raise ValueError(f"unknown source format {prefix!r} in {spec!r}; known: {', '.join(FORMATS)}")
    if spec == "digits":
        return "digits", ""
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"data source {spec!r} does not exist; give 'digits', a folder, a .zip, .npz, "
            f".csv or .parquet file"
        )
    suffix = path.suffix.lower()
    if path.is_dir():
        if is_hirise(path):
            return "hirise", str(path)
        return ("galaxy_zoo" if is_galaxy_zoo(path) else "folder"), str(path)
    if suffix == ".npz":
        return "npz", str(path)
    if suffix == ".zip":
        return ("hirise" if is_hirise(path) else "zip"), str(path)
    if suffix == ".csv":
        return "manifest", str(path)
    if suffix == ".parquet":
        schema = pq.read_schema(path)
        if "path" in schema.names:
            return "manifest", str(path)
        if image_bytes_column(schema):
            return "parquet", str(path)
        raise ValueError(f"{path} has neither a 'path' column (manifest) nor a binary image column")
    raise ValueError(
        f"cannot tell the format of {spec!r}; give a folder or a .zip/.npz/.csv/.parquet file, "
        f"or prefix the spec with one of {', '.join(f + ':' for f in FORMATS)}"
    )


def load_source(cfg) -> Source:
    """The Source for ``cfg.spec`` (a :class:`deimos_ray.config.DataConfig`)."""
    fmt, location = detect_format(cfg.spec)
    return LOADERS[fmt](location, cfg)


__all__ = ["FORMATS", "IMAGE_EXTENSIONS", "Source", "detect_format", "list_image_files", "load_source"]
