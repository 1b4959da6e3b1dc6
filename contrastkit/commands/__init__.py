"""Command handlers kept out of :mod:`contrastkit.cli`: :mod:`~contrastkit.commands.catalog`
(``list``, ``explain``, ``eval --help``'s task list, ``plan``, ``curate``, the executor options of
``study``) and :mod:`~contrastkit.commands.runs` (``ttm``,
``continual``, ``prototypes``); :mod:`~contrastkit.commands.parsers` builds the parser.
"""

from contrastkit.commands.catalog import (
    KINDS,
    FilterSteps,
    TasksHelp,
    add_curate_parser,
    add_executor_arguments,
    curate,
    explain,
    listing,
    plan,
    ray_options,
    registry,
    tasks_epilog,
)
from contrastkit.commands.parsers import build_parser
from contrastkit.commands.runs import (
    add_continual_parser,
    add_prototypes_parser,
    add_ttm_parser,
    continual,
    prototypes,
    ttm,
)

__all__ = [
    "KINDS",
    "FilterSteps",
    "TasksHelp",
    "add_continual_parser",
    "add_curate_parser",
    "add_executor_arguments",
    "add_prototypes_parser",
    "add_ttm_parser",
    "build_parser",
    "continual",
    "curate",
    "explain",
    "listing",
    "plan",
    "prototypes",
    "ray_options",
    "registry",
    "tasks_epilog",
    "ttm",
]
