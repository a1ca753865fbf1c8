"""``--help`` of the command-line apps: only the config groups the app composes, with their options.

Hydra's default help lists every group of the config directory, so ``generate --help`` offered
``model``, ``optim`` and ``uq`` options that it never reads (and the internal ``schema/*``
groups). Each app's help (``configs/hydra/help/probneural.yaml``) instead lists the groups of
its own defaults list, read from ``hydra:runtime.choices`` by the ``probneural_groups``
resolver, with the options found in ``configs/<group>/``.
"""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import OmegaConf

from probneural.config.paths import CONFIG_DIR

__all__ = ["app_groups", "register_help_resolver"]


def app_groups(choices: Mapping[str, object]) -> str:
    """One line ``group: option, option, ...`` per config group in ``choices`` that has options in ``configs/``.

    Args:
        choices: Hydra's ``runtime.choices`` (group → selected option) of the composed app config;
            Hydra's own groups (``hydra/...``) are skipped.

    Returns:
        The lines, groups sorted by name; the option the composed config selected (the app's
        default, or one given on the command line) is marked ``(selected)``, and a group left
        unset (``null``) says ``(none selected)``. A literal ``$`` is written ``$$`` (the help
        template is a ``string.Template``).
    """
    lines = []
    for group in sorted(str(name) for name in choices if not str(name).startswith("hydra")):
        options = sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))
        if options:
            chosen = choices[group]
            listed = ", ".join(f"{option} (selected)" if option == chosen else option for option in options)
            lines.append(f"{group}: {listed}" + (" (none selected)" if chosen is None else ""))
    return "\n".join(lines).replace("$", "$$")


def register_help_resolver() -> None:
    """Register the ``probneural_groups`` resolver that the help template calls (idempotent)."""
    if not OmegaConf.has_resolver("probneural_groups"):
        OmegaConf.register_new_resolver("probneural_groups", app_groups)
