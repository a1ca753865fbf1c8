"""UQ method options are checked without fitting (so a run refuses them before training), and warn when inert."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from probneural import uq
from probneural.uq.options import check_method_options
from probneural.uq.report import UQSpec


@pytest.mark.parametrize("name", uq.METHODS.names())
def test_every_method_checks_its_options_and_its_defaults_pass(name):
    method = uq.METHODS.get(name)
    assert callable(getattr(method, "option_check", None)), f"{name} has no option check"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settings = check_method_options(method, {})
    parameters = inspect.signature(method).parameters.values()
    assert set(settings) == {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


BAD_VALUES = [
    ("laplace", {"structure": "full"}, r"structure: expected one of \['last_layer', 'diagonal', 'kfac', 'low_rank'\]"),
    ("laplace", {"prior_precision": -1.0}, r"prior_precision must be > 0"),
    ("laplace", {"noise_variance": [0.1, 0.0]}, r"noise_variance: expected a positive number or one per output"),
    ("laplace", {"structure": "low_rank", "rank": 0}, r"rank must be an int >= 1"),
    ("conformal", {"alpha": 1.5}, r"alpha: expected a miscoverage level in \(0, 1\)"),
    ("conformal", {"scale_split": 1.0}, r"scale_split: expected a fraction in \(0, 1\)"),
    ("ensemble", {"members": 0}, r"members must be an int >= 1"),
    ("ensemble", {"lr": 0.0}, r"lr must be > 0"),
    ("ensemble", {"loss": "mse"}, r"loss: expected one of \['rel_h1', 'rel_l2'\]"),
    ("mc_dropout", {"p": 1.0}, r"p: expected a dropout probability in \(0, 1\)"),
    ("mc_dropout", {"layers": "hidden"}, r"layers: expected one of"),
    ("mc_dropout", {"samples": 1}, r"samples must be an int >= 2"),
    ("pno", {"score": "nll"}, r"score: expected one of \['crps', 'energy'\]"),
    ("pno", {"weight_decay": -1e-4}, r"weight_decay must be >= 0"),
    ("gp_exact", {"points": 1}, r"points must be an int >= 2"),
    ("gp_exact", {"dtype": "float16"}, r"dtype"),
    ("gp_svgp", {"latents": 0}, r"latents must be an int >= 1"),
    ("gp_svgp", {"epochs": -0.5}, r"epochs must be >= 0"),
    ("pyro_svi", {"guide": "full"}, r"guide: expected one of \['normal', 'low_rank'\]"),
    ("pyro_svi", {"scale_lr": 0.0}, r"scale_lr must be > 0"),
    ("pyro_svi", {"noise": "heteroscedastic", "noise_variance": 0.1}, r"noise_variance: a fixed noise variance"),
    ("pyro_nuts", {"chains": 0}, r"chains must be an int >= 1"),
    ("pyro_nuts", {"prior_scale": 0.0}, r"prior_scale must be > 0"),
]


@pytest.mark.parametrize("method, options, match", BAD_VALUES)
def test_a_bad_value_is_refused_when_the_spec_is_made(method, options, match):
    # UQSpec is made before any data are generated or any model is trained (train CLI)
    fit_split = "calibration" if method == "conformal" else None
    with pytest.raises(ValueError, match=rf"^options: {match}"):
        UQSpec("x", method, options, fit_split=fit_split)


def test_every_method_has_a_bad_value_case():
    assert {method for method, _, _ in BAD_VALUES} == set(uq.METHODS.names())


def test_base_options_are_checked_too():
    with pytest.raises(ValueError, match=r"^base_options: prior_precision must be > 0"):
        UQSpec("x", "conformal", fit_split="calibration", base="laplace", base_options={"prior_precision": 0.0})


@pytest.mark.parametrize("method, options, base, warning", [
    ("laplace", {"rank": 20}, None, r"rank=20 has no effect: rank is only used with structure='low_rank'"),
    ("laplace", {"structure": "kfac", "samples": 64, "subset": 64}, None, r"subset=64 has no effect"),
    ("laplace", {"samples": 64}, None, r"samples=64 has no effect: .*closed-form"),
    ("laplace", {"structure": "low_rank", "curvature_samples": 4}, None, r"curvature_samples=4 has no effect"),
    ("conformal", {"scale_split": 0.25}, "laplace", r"scale_split=0.25 has no effect: .*point predictor"),
    ("mc_dropout", {"lr": 1e-3}, None, r"lr=0.001 has no effect: lr is only used when training, with epochs > 0"),
    ("pyro_svi", {"rank": 4}, None, r"rank=4 has no effect: rank is only used with guide='low_rank'"),
    ("gp_exact", {"epochs": 0, "lr": 0.1}, None, r"lr=0.1 has no effect"),
])
def test_an_option_the_others_make_inert_warns(method, options, base, warning):
    # a warning, not an error: sweeps (structure=last_layer,low_rank with rank=20) reach such settings
    fit_split = "calibration" if method == "conformal" else None
    with pytest.warns(UserWarning, match=warning):
        UQSpec("x", method, options, fit_split=fit_split, base=base)


class _Untouchable:
    """A loader that fails the test if anything iterates it."""

    def __iter__(self):
        raise AssertionError("the loader was read before the options were checked")


@pytest.mark.parametrize("method, options, match", BAD_VALUES[::4])
def test_fitting_checks_the_options_before_reading_any_data(method, options, match):
    model = torch.nn.Conv1d(1, 1, 1)
    with pytest.raises(ValueError, match=f"^{match}"):
        uq.fit(method, model, _Untouchable(), **options)


RECIPE = {"epochs": 500, "lr": 5e-4, "weight_decay": 1e-5, "loss": "rel_h1", "optimizer": "adam",
          "scheduler": "cosine", "grad_clip": None, "precision": "fp32"}


def test_new_members_follow_the_runs_recipe_unless_told_otherwise():
    from probneural.uq.report import follow_training_recipe

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Adam, cosine, no clipping, fp32: nothing the members cannot follow
        spec = follow_training_recipe({"name": "e", "method": "ensemble", "options": {"members": 3, "lr": 1e-3}},
                                      RECIPE)
    assert spec["options"] == {"members": 3, "epochs": 500, "lr": 1e-3, "weight_decay": 1e-5, "loss": "rel_h1"}
    UQSpec(**spec)  # a valid spec
    laplace = {"name": "l", "method": "laplace", "options": {"structure": "kfac"}}
    assert follow_training_recipe(laplace, RECIPE) == laplace  # a method that trains no operator
    based = follow_training_recipe({"name": "c", "method": "conformal", "base": "ensemble"}, RECIPE)
    assert based["base_options"]["epochs"] == 500 and "options" not in based


def test_an_adamw_runs_weight_decay_is_not_given_to_adam_members():
    from probneural.uq.report import follow_training_recipe

    with pytest.warns(UserWarning, match=r"unlike the run \({'optimizer': 'adamw'}\); epochs, lr, loss follow the run"):
        spec = follow_training_recipe({"name": "e", "method": "ensemble"}, RECIPE | {"optimizer": "adamw"})
    assert spec["options"] == {"epochs": 500, "lr": 5e-4, "loss": "rel_h1"}  # decoupled decay means another thing


def test_recipe_settings_the_members_cannot_follow_are_named():
    from probneural.uq.report import follow_training_recipe

    recipe = RECIPE | {"scheduler": "step", "grad_clip": 1.0, "precision": "bf16"}
    with pytest.warns(UserWarning, match=r"ensemble: new members train with Adam, a cosine schedule, .*unlike the run "
                                         r"\({'scheduler': 'step', 'grad_clip': 1.0, 'precision': 'bf16'}\)"):
        follow_training_recipe({"name": "e", "method": "ensemble"}, recipe)
