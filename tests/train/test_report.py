"""The run report evaluates every split and draws samples for 1-D and 2-D problems."""

import pytest
import torch

from probneural.data import OperatorDataset
from probneural.operators import FNO
from probneural.train.report import write_training_report


@pytest.mark.parametrize("spatial", [(16,), (8, 8)])
def test_report_has_metrics_and_sample_plots(tmp_path, spatial):
    torch.manual_seed(0)
    grid = tuple(torch.linspace(0, 1, n) for n in spatial)
    data = OperatorDataset(torch.randn(3, 1, *spatial), torch.randn(3, 1, *spatial), grid, {"problem": "toy"})
    model = FNO(in_channels=1, out_channels=1, modes=(2,) * len(spatial), width=4, n_layers=1)
    history = [{"epoch": 1, "train_loss": 1.0, "val_rel_l2": 1.0, "seconds": 0.1}]
    results = write_training_report(tmp_path, model, {"test": data}, history, n_plot_samples=2)
    assert set(results["test"]) >= {"rel_l2", "rel_h1"}
    report = (tmp_path / "report.md").read_text()
    assert "| test |" in report and "![test](samples_0.png)" in report
    assert (tmp_path / "samples_0.png").stat().st_size > 1000 and (tmp_path / "learning_curves.png").exists()


def test_learning_curves_of_a_run_resumed_with_another_validation_setting(tmp_path):
    """A run resumed with(out) a validation split has records with and without val_rel_l2: both plot."""
    from probneural.plots import plot_learning_curves

    history = [{"epoch": 1, "train_loss": 1.0, "val_rel_l2": 0.5}, {"epoch": 2, "train_loss": 0.5},
               {"epoch": 3, "train_loss": 0.4, "val_rel_l2": 0.3}]
    assert plot_learning_curves(history, tmp_path / "curves.png").is_file()  # was a KeyError at epoch 2
    assert plot_learning_curves(history[1:], tmp_path / "later.png").is_file()
