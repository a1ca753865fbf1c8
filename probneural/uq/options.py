"""Checked keyword options of UQ methods: checked when a method runs and, without running it, when a spec is made.

A method decorated with :func:`checked_options` has its keyword options (defaults filled in)
checked and normalised by its check function before its body runs, so the body receives valid
values; :func:`check_method_options` runs the same check without the model or data, which lets
:class:`probneural.uq.report.UQSpec` refuse a bad value before a training run rather than after it.

A check function ``check(options, defaults, on_posterior)`` changes ``options`` in place
(normalised values) and raises a ``ValueError`` naming the option. ``on_posterior`` says
whether the method is fitted to a posterior (a ``base`` method's) rather than to an operator.
Besides values, it warns of options set away from their defaults where the other options make
them have no effect (:func:`probneural.validation.warn_unused`): a setting should not silently do
nothing.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping, TypeVar

from probneural.uq.posterior import Posterior

__all__ = ["OptionCheck", "check_method_options", "checked_options"]

OptionCheck = Callable[[dict[str, Any], Mapping[str, Any], bool], None]
Method = TypeVar("Method", bound=Callable[..., Any])


def _defaults(method: Callable[..., Any]) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(method).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


def checked_options(check: OptionCheck) -> Callable[[Method], Method]:
    """Decorate a UQ method ``method(model, loader, **options)`` so that ``check`` checks its options first.

    The body receives every keyword option, defaults filled in, as ``check`` left them. The
    check is stored on the method for :func:`check_method_options`.
    """

    def decorate(method: Method) -> Method:
        defaults = _defaults(method)

        @functools.wraps(method)
        def run(model: Any, loader: Any, **options: Any) -> Any:
            return method(model, loader, **_checked(check, defaults, options, isinstance(model, Posterior)))

        run.option_check = check  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return decorate


def _checked(check: OptionCheck, defaults: Mapping[str, Any], options: Mapping[str, Any],
             on_posterior: bool) -> dict[str, Any]:
    settings = dict(defaults) | dict(options)
    check(settings, defaults, on_posterior)
    return settings


def check_method_options(method: Callable[..., Any], options: Mapping[str, Any], *, on_posterior: bool = False,
                         ) -> dict[str, Any]:
    """Check ``options`` (option names already checked) with ``method``'s check, without fitting anything.

    Args:
        method: a registered UQ method.
        options: some of its keyword options.
        on_posterior: the method will be fitted to a posterior (a ``base`` method's).

    Returns:
        Every option, defaults filled in, normalised (methods without a check: as given, with defaults).

    Raises:
        ValueError: naming an option with a bad value, or one that the other options make ineffective.
    """
    check = getattr(method, "option_check", None)
    defaults = _defaults(method)
    if check is None:
        return dict(defaults) | dict(options)
    return _checked(check, defaults, options, on_posterior)
