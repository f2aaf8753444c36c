"""Where every file of an atlas folder lives: the one place that spells out the layout.

::

    ATLAS/
      atlas.db                      results (SQLite; see :mod:`convscope.atlas.schema`)
      atlas.lock                    the writer lock (pid, host, command of the writer)
      scan.ckpt                     the local scan's checkpoint
      ray_shards/                   kept shards of a Ray scan (``--resume``)
      ray_dissect_shards/           kept shards of a Ray dissection
      features/POOLING/             a feature folder (``convscope features``)
      evaluations/NAME/             an evaluation of attribution methods (``convscope evaluate``):
                                    evaluation.npz, table.csv, table.json, ranked.png
      .evaluate-NAME.ckpt           the checkpoint of a running evaluation (and its settings, .json)
      activation_atlases/LAYER/     an activation atlas of a layer: atlas.npz (the ActivationAtlas),
                                    atlas.png (the big picture), tiles/cell0000.png (one per cell)
      render/LAYER/unit0001_max.png          top-K grid of a unit (``direction0001_max.png``)
      render/LAYER/unit0001_rf.png           empirical receptive field panel
      render/LAYER/unit0001_stimuli.png      manufactured-stimulus test
      render/rf_sizes.json, rf_sizes.png     empirical vs theoretical RF sizes per layer
      render/dissect/SET/...                 dissection report of the concept set SET
      render/dictionaries/NAME/concept0001.png   picture (feature visualisation) of a learned concept
      render/visuals/LAYER/unit0001_positive0.png  stored feature visualisation of a unit
                                    (kinds positive, negative, diversity; the index in its set)
      render/neighbors/LAYER/QUERY.png       nearest-neighbour grids
      render/probe/probe_POOLING_CLASSIFIER.png
      render/project/LAYER/METHOD.png, METHOD_thumbnails.png
      render/compare/MEASURE[_OTHER].png

:class:`AtlasPaths` needs no database: ``AtlasPaths(folder).features_dir("gap")`` works on a
folder that holds only features. :class:`~convscope.atlas.store.Atlas` has every helper too.
"""

from __future__ import annotations

from pathlib import Path

from convscope.errors import UserInputError

DB_NAME = "atlas.db"
LOCK_NAME = "atlas.lock"
CHECKPOINT_NAME = "scan.ckpt"
RENDER = "render"
SHARDS = {"scan": "ray_shards", "dissect": "ray_dissect_shards"}


def component(name: str, what: str = "name") -> str:
    """``name`` as one folder or file name inside the atlas: a name that is empty, ``.``,
    ``..`` or holds a path separator or NUL would place the file elsewhere, and is refused."""
    name = str(name)
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise UserInputError(f"{what} {name!r} cannot name a file in the atlas")
    return name


def safe_name(name: str) -> str:
    """A layer or image name as one file name (no folder separators; ``#`` of token layers
    made ``@``)."""
    return name.replace("/", "_").replace("#", "@")


def is_private_file(name: str) -> bool:
    """Whether a file of an atlas folder is for convscope alone and never served or shared: the
    database and its journals, the writer lock (pid, host and command line of the writer), the
    scan checkpoint, and temporary files (dot-files)."""
    return name.startswith((".", DB_NAME)) or name in (LOCK_NAME, CHECKPOINT_NAME)


class AtlasPaths:
    """The paths of the files of the atlas folder ``path`` (nothing is created or checked)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- the database, the lock and the checkpoint --------------------------------------------
    @property
    def db_path(self) -> Path:
        """``ATLAS/atlas.db``."""
        return self.path / DB_NAME

    @property
    def lock_path(self) -> Path:
        """``ATLAS/atlas.lock``, the writer lock."""
        return self.path / LOCK_NAME

    @property
    def checkpoint_path(self) -> Path:
        """``ATLAS/scan.ckpt``, the local scan's checkpoint."""
        return self.path / CHECKPOINT_NAME

    def shards_dir(self, kind: str = "scan") -> Path:
        """Folder of the kept shards of a Ray job: ``kind`` is ``"scan"`` or ``"dissect"``."""
        return self.path / SHARDS[kind]

    # -- features -----------------------------------------------------------------------------
    def features_dir(self, pooling: str) -> Path:
        """``ATLAS/features/POOLING``, the feature folder of one pooling (gap, mac, spoc, gem)."""
        return self.path / "features" / component(pooling, "pooling")

    # -- evaluations of attribution methods ----------------------------------------------------
    def evaluation_dir(self, name: str) -> Path:
        """``ATLAS/evaluations/NAME``: the files of the evaluation ``name``."""
        return self.path / "evaluations" / component(name, "evaluation")

    def evaluation_file(self, name: str, kind: str) -> Path:
        """One file of the evaluation ``name``: ``kind`` is ``result`` (``evaluation.npz``, the
        :class:`~convscope.attribution.evaluation.Evaluation`), ``csv`` (``table.csv``), ``json``
        (``table.json``) or ``plot`` (``ranked.png``)."""
        from convscope.atlas.evaluations import FILES

        return self.evaluation_dir(name) / FILES[kind]

    def evaluation_checkpoint(self, name: str) -> Path:
        """``ATLAS/.evaluate-NAME.ckpt``: the checkpoint of a running evaluation (a dot-file:
        private to convscope, never served), removed once it is stored."""
        return self.path / f".evaluate-{component(name, 'evaluation')}.ckpt"

    # -- activation atlases --------------------------------------------------------------------
    def activation_atlas_dir(self, layer: str) -> Path:
        """``ATLAS/activation_atlases/LAYER``: the files of one layer's activation atlas."""
        return self.path / "activation_atlases" / component(safe_name(layer), "layer")

    def activation_atlas_file(self, layer: str, kind: str) -> Path:
        """One file of a layer's activation atlas: ``kind`` is ``result`` (``atlas.npz``, the
        :class:`~convscope.synthesis.activation_atlas.ActivationAtlas`) or ``image``
        (``atlas.png``, the big picture)."""
        from convscope.atlas.activation_atlases import FILES

        return self.activation_atlas_dir(layer) / FILES[kind]

    def activation_atlas_tile(self, layer: str, cell: int) -> Path:
        """The tile PNG of one drawn cell (``tiles/cell0000.png``, by cell index)."""
        from convscope.atlas.activation_atlases import TILES

        return self.activation_atlas_dir(layer) / TILES / f"cell{int(cell):04d}.png"

    # -- renders of units ---------------------------------------------------------------------
    @property
    def render_dir(self) -> Path:
        """``ATLAS/render``: every picture the atlas holds is under it."""
        return self.path / RENDER

    def unit_render(self, layer: str, unit: int, criterion: str = "max", direction: bool = False) -> Path:
        """Top-K grid PNG of one unit (or random direction) and criterion."""
        kind = "direction" if direction else "unit"
        return self.render_dir / component(layer, "layer") / component(f"{kind}{unit:04d}_{criterion}.png")

    def empirical_rf_render(self, layer: str, unit: int) -> Path:
        """Empirical receptive field panel PNG of one unit."""
        return self.render_dir / component(layer, "layer") / f"unit{unit:04d}_rf.png"

    def stimuli_render(self, layer: str, unit: int) -> Path:
        """Manufactured-stimulus test PNG of one unit."""
        return self.render_dir / component(layer, "layer") / f"unit{unit:04d}_stimuli.png"

    def rf_sizes(self, suffix: str = ".png") -> Path:
        """The per-layer empirical RF size summary: ``.png`` (plot) or ``.json`` (numbers)."""
        return self.render_dir / f"rf_sizes{suffix}"

    # -- dissection reports -------------------------------------------------------------------
    def dissection_dir(self, concepts: str) -> Path:
        """``ATLAS/render/dissect/SET``: the report of the dissections on concept set ``concepts``."""
        return self.render_dir / "dissect" / component(concepts, "concept set")

    def dissection_file(self, concepts: str, name: str) -> Path:
        """A file of the report as a whole: ``layers.png``, ``summary.json``."""
        return self.dissection_dir(concepts) / component(name)

    def dissection_layer_file(self, concepts: str, layer: str, suffix: str) -> Path:
        """A file of one layer of the report: ``suffix`` is ``units.json``, ``units.csv`` or
        ``concepts.png`` (``SET/LAYER_units.csv``)."""
        return self.dissection_dir(concepts) / component(f"{safe_name(layer)}_{suffix}")

    def dissection_unit_render(self, concepts: str, layer: str, unit: int) -> Path:
        """The figure of one labelled unit (``SET/LAYER/unit0001.png``)."""
        return self.dissection_dir(concepts) / component(safe_name(layer), "layer") / f"unit{unit:04d}.png"

    # -- learned concept sets (dictionaries) ---------------------------------------------------
    def dictionary_dir(self, name: str) -> Path:
        """``ATLAS/render/dictionaries/NAME``: the pictures of the dictionary ``name``."""
        return self.render_dir / "dictionaries" / component(name, "dictionary")

    def dictionary_picture(self, name: str, concept: int) -> Path:
        """The picture (feature visualisation) of one concept (``NAME/concept0001.png``)."""
        return self.dictionary_dir(name) / f"concept{int(concept):04d}.png"

    # -- stored feature visualisations ----------------------------------------------------------
    def visuals_dir(self, layer: str) -> Path:
        """``ATLAS/render/visuals/LAYER``: the stored feature visualisations of one layer."""
        return self.render_dir / "visuals" / component(safe_name(layer), "layer")

    def visual_tile(self, layer: str, unit: int, kind: str, index: int = 0) -> Path:
        """One stored feature visualisation PNG: ``kind`` is ``positive``, ``negative`` or
        ``diversity`` and ``index`` its number in the unit's set (``unit0001_diversity2.png``)."""
        from convscope.atlas.visuals import check_kind

        return self.visuals_dir(layer) / f"unit{int(unit):04d}_{check_kind(kind)}{int(index)}.png"

    # -- representation figures ---------------------------------------------------------------
    def neighbors_render(self, layer: str, query: str) -> Path:
        """Nearest-neighbour grid of the query image named ``query`` (folders flattened)."""
        return (
            self.render_dir
            / "neighbors"
            / component(layer, "layer")
            / component(f"{query.replace('/', '_')}.png")
        )

    def probe_render(self, pooling: str, classifier: str) -> Path:
        """Linear-probe accuracy figure of one pooling and classifier."""
        return self.render_dir / "probe" / component(f"probe_{pooling}_{classifier}.png")

    def projection_render(self, layer: str, method: str, thumbnails: bool = False) -> Path:
        """2-D projection (``tsne``, ``umap``, ``pca``) scatter, or its thumbnail map."""
        name = f"{method}{'_thumbnails' if thumbnails else ''}.png"
        return self.render_dir / "project" / component(layer, "layer") / component(name)

    def comparison_render(self, measure: str, other: str | None = None) -> Path:
        """Layer-similarity matrix (``cka``, ...) of this atlas, or against the atlas ``other``."""
        return self.render_dir / "compare" / component(f"{measure}{'_' + other if other else ''}.png")
