"""Trainer: learning, exact resume, checkpoints that refuse corruption, non-finite losses, precision."""

from __future__ import annotations

import json

import pytest
import torch

from probneural.data import OperatorDataset
from probneural.operators import FNO
from probneural.train import (
    CheckpointError,
    NonFiniteLossError,
    Trainer,
    evaluate,
    latest_checkpoint,
    load_checkpoint,
    load_model,
    PrecisionPolicy,
    normalize,
)
from probneural.train import checkpoint as checkpoint_module
from probneural.train import trainer as trainer_module
from probneural.train.checkpoint import save_checkpoint
from probneural.train.losses import relative_l2


def make_model(train, seed=0):
    torch.manual_seed(seed)
    return normalize(FNO(1, 1, (4, 4), width=8, n_layers=2, projection_channels=16), train)


def trainer(tmp_path, epochs, **kwargs):
    options = dict(batch_size=6, lr=3e-3, seed=3, progress=False, device="cpu")
    if kwargs.get("scheduler", "step") == "step":
        options |= dict(step_size=2, gamma=0.7)
    return Trainer(epochs=epochs, run_dir=tmp_path, **(options | kwargs))


def test_training_reduces_the_test_error(darcy_small, tmp_path):
    train, test = darcy_small
    model = make_model(train)
    before = evaluate(model, test)["rel_l2"]
    history = trainer(tmp_path, 8, batch_size=3, lr=1e-2, scheduler="constant").fit(model, train, test)
    assert history[-1]["val_rel_l2"] < 0.5 * before
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 9))
    assert {"train_loss", "val_rel_l2", "seconds", "lr"} <= set(json.loads(lines[0]))


def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(darcy_small, tmp_path):
    train, test = darcy_small
    straight = make_model(train)
    history = trainer(tmp_path / "straight", 4).fit(straight, train, test)

    interrupted = make_model(train)
    trainer(tmp_path / "resumed", 2).fit(interrupted, train, test)
    resumed = make_model(train, seed=99)  # a fresh process would start from other weights
    resumed_history = trainer(tmp_path / "resumed", 4).fit(resumed, train, test, resume=True)

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["train_loss"] for r in resumed_history] == [r["train_loss"] for r in history]


def test_resuming_a_finished_cosine_run_for_more_epochs_follows_the_longer_schedule(darcy_small, tmp_path):
    train, test = darcy_small
    fresh = trainer(tmp_path / "fresh", 4, scheduler="cosine").fit(make_model(train), train, test)
    trainer(tmp_path / "extended", 2, scheduler="cosine").fit(make_model(train), train, test)  # ends at rate 0
    extended = trainer(tmp_path / "extended", 4, scheduler="cosine").fit(make_model(train), train, test, resume=True)
    assert [r["lr"] for r in extended[2:]] == pytest.approx([r["lr"] for r in fresh[2:]], rel=1e-12)
    assert extended[3]["lr"] > 0 and extended[3]["train_loss"] != extended[2]["train_loss"]


def test_load_model_rebuilds_the_trained_model(darcy_small, tmp_path):
    train, test = darcy_small
    model = make_model(train)
    trainer(tmp_path, 2).fit(model, train)
    loaded = load_model(tmp_path / "checkpoints")
    torch.testing.assert_close(loaded(test.x), model(test.x), rtol=0, atol=0)


def test_only_the_newest_checkpoints_are_kept(darcy_small, tmp_path):
    train, _ = darcy_small
    trainer(tmp_path, 3, checkpoint_keep=2).fit(make_model(train), train)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch-0002.json", "epoch-0002.safetensors", "epoch-0003.json", "epoch-0003.safetensors"]


def test_a_fresh_run_refuses_a_run_directory_with_checkpoints(darcy_small, tmp_path):
    train, _ = darcy_small
    trainer(tmp_path, 3).fit(make_model(train), train)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ValueError, match=r"run_dir: .* already holds checkpoints \(newest epoch-0003.json\); resume"):
        trainer(tmp_path, 2, lr=5e-3).fit(make_model(train), train)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_resume_refuses_other_training_data(darcy_small, tmp_path):
    train, test = darcy_small
    trainer(tmp_path, 1).fit(make_model(train), train)
    with pytest.raises(ValueError, match="resume: .* was trained on other data"):
        trainer(tmp_path, 2).fit(make_model(train), test, resume=True)  # another seed and size
    assert latest_checkpoint(tmp_path / "checkpoints").name == "epoch-0001.json"


def test_fit_fails_before_training_where_a_checkpoint_could_not_be_written_or_resumed(darcy_small, tmp_path):
    train, _ = darcy_small

    class Plain(torch.nn.Module):  # not a registered operator: checkpoints cannot rebuild it
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.weight * x

    with pytest.raises(ValueError, match="not a registered operator"):
        trainer(tmp_path / "plain", 1).fit(Plain(), train)
    assert not (tmp_path / "plain" / "metrics.jsonl").exists()
    trainer(tmp_path, 3).fit(make_model(train), train)
    with pytest.raises(ValueError, match="resume: .* has trained 3 epochs, more than epochs=2"):
        trainer(tmp_path, 2).fit(make_model(train), train, resume=True)
    with pytest.raises(ValueError, match="device"):
        load_model(tmp_path / "checkpoints", map_location="gpu")


def test_saving_never_corrupts_a_checkpoint(darcy_small, tmp_path):
    """Metadata that cannot be written fails before any file changes; a re-saved epoch is never
    left pointing at other weights; the checkpoint just written is never pruned."""
    train, _ = darcy_small
    model = make_model(train)
    meta = {"name": "fno", "config": {}}
    directory = tmp_path / "checkpoints"
    handle = save_checkpoint(directory, 3, model=model, model_meta=meta, extra={"val": 0.5})
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    with pytest.raises(TypeError, match="not JSON serializable"):
        save_checkpoint(directory, 3, model=model, model_meta=meta, extra={"val": object()})
    with pytest.raises(TypeError):  # serialisable, but not with the checksum's sorted keys
        save_checkpoint(directory, 3, model=model, model_meta=meta, extra={1: "a", "b": 2})
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    load_checkpoint(handle)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    calls = []

    def crash_after_the_weights(path, write, real=checkpoint_module.atomic_write):
        calls.append(path.name)
        if path.suffix == ".json":
            raise KeyboardInterrupt  # killed between the weights and the handle
        return real(path, write)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint_module, "atomic_write", crash_after_the_weights)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(directory, 3, model=model, model_meta=meta)
    assert calls == ["epoch-0003.safetensors", "epoch-0003.json"]
    assert latest_checkpoint(directory) is None  # no handle vouches for the replaced weights
    save_checkpoint(directory, 5, model=model, model_meta=meta, keep=1)
    lower = save_checkpoint(directory, 4, model=model, model_meta=meta, keep=1)
    assert lower.is_file() and load_checkpoint(lower).meta["epoch"] == 4


def test_evaluate_refuses_a_bad_batch_size(darcy_small):
    train, test = darcy_small
    for batch_size in (0, -1, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            evaluate(make_model(train), test, batch_size=batch_size)


def test_corrupted_or_tampered_checkpoint_raises_a_clear_error(darcy_small, tmp_path):
    train, _ = darcy_small
    trainer(tmp_path, 1).fit(make_model(train), train)
    handle = latest_checkpoint(tmp_path / "checkpoints")
    original = handle.read_text()
    meta = json.loads(original)
    meta["model"]["config"]["width"] = 9  # an edited metadata file (also a resumed epoch or lr would be)
    handle.write_text(json.dumps(meta, indent=1))
    with pytest.raises(CheckpointError, match="metadata file .* is corrupted or was modified"):
        load_model(handle)
    older = {k: v for k, v in json.loads(original).items() if k != "meta_sha256"}  # written before the field
    handle.write_text(json.dumps(older))
    load_checkpoint(handle)
    handle.write_text(original)
    weights = handle.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted or was modified"):
        load_model(handle)
    handle.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(handle)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no epoch-"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match=r"epoch-0010.json does not exist; the directory holds "
                                              r"\['epoch-0001.json'\] \(only the newest are kept\)"):
        load_checkpoint(handle.parent / "epoch-0010.json")


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(darcy_small, tmp_path):
    train, _ = darcy_small
    model = make_model(train)
    trainer(tmp_path, 1).fit(model, train)
    good = latest_checkpoint(tmp_path / "checkpoints")
    good_bytes = good.with_suffix(".safetensors").read_bytes()
    model.register_forward_hook(lambda module, args, output: output * float("nan"))  # the same model and data
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1.*Last good checkpoint: .*epoch-0001\.json"):
        trainer(tmp_path, 3).fit(model, train, resume=True)
    assert latest_checkpoint(tmp_path / "checkpoints") == good
    assert good.with_suffix(".safetensors").read_bytes() == good_bytes
    load_model(good)


@pytest.mark.parametrize("precision, dtype", [("fp64", torch.float64), ("bf16", torch.float32), ("fp16", torch.float32)])
def test_precision_policies_train(darcy_small, tmp_path, precision, dtype):
    """Each policy trains (the test error falls well below the untrained model's) and bf16/fp16
    really run the pointwise products in half precision (autocast)."""
    train, test = darcy_small
    model = make_model(train)
    before = evaluate(model, test)["rel_l2"]
    seen = []
    hook = model.operator.skips[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    history = trainer(tmp_path, 8, batch_size=3, lr=1e-2, scheduler="constant", precision=precision).fit(model, train)
    hook.remove()
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)
    assert next(model.parameters()).dtype == dtype
    assert set(seen) == {{"fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]}
    assert evaluate(model, test, precision=precision)["rel_l2"] < 0.7 * before


@pytest.mark.parametrize(
    "kwargs, match",
    [({"optimizer": "sgdx"}, "optimizer"), ({"scheduler": "poly"}, "scheduler"), ({"precision": "fp8"}, "precision"),
     ({"loss": "l3"}, "loss: expected one of"), ({"epochs": 0}, "epochs"), ({"epochs": 2.5}, "epochs"),
     ({"lr": "1e-3"}, "lr must be a finite real number"), ({"weight_decay": float("nan")}, "weight_decay"),
     ({"seed": 1.5}, "seed must be an int"), ({"grad_clip": 0.0}, "grad_clip")],
)
def test_bad_trainer_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Trainer(**kwargs)


def test_precision_cast_keeps_complex_parameters_complex():
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64))
    module.b = torch.nn.Parameter(torch.ones(2))
    PrecisionPolicy.from_name("fp64").cast_module(module, torch.device("cpu"))
    assert module.w.dtype == torch.complex128 and module.b.dtype == torch.float64
    torch.testing.assert_close(module.w.detach(), torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex128))


def test_load_model_keeps_float64_weights_exact(darcy_small, tmp_path):
    train, _ = darcy_small
    model = make_model(train)
    trainer(tmp_path, 1, precision="fp64").fit(model, train)
    loaded = load_model(tmp_path / "checkpoints")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_fp16_resume_is_exact_including_the_loss_scale(darcy_small, tmp_path):
    train, _ = darcy_small
    straight = make_model(train)
    trainer(tmp_path / "a", 3, precision="fp16").fit(straight, train)
    resumed = make_model(train)
    trainer(tmp_path / "b", 1, precision="fp16").fit(resumed, train)
    trainer(tmp_path / "b", 3, precision="fp16").fit(resumed, train, resume=True)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    saved = load_checkpoint(tmp_path / "b" / "checkpoints").meta["grad_scaler"]
    assert saved == load_checkpoint(tmp_path / "a" / "checkpoints").meta["grad_scaler"]


def test_resume_refuses_changed_settings_and_falls_back_past_a_corrupted_checkpoint(darcy_small, tmp_path):
    train, _ = darcy_small
    model = make_model(train)
    trainer(tmp_path, 2).fit(model, train)
    with pytest.raises(ValueError, match=r"other settings.*'lr'"):
        trainer(tmp_path, 3, lr=1e-2).fit(make_model(train), train, resume=True)
    newest = latest_checkpoint(tmp_path / "checkpoints")
    newest.with_suffix(".safetensors").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipping unusable checkpoint"):
        history = trainer(tmp_path, 3).fit(make_model(train), train, resume=True)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert (tmp_path / "checkpoints" / "epoch-0002.safetensors.unusable").read_bytes() == b"garbage"
    assert latest_checkpoint(tmp_path / "checkpoints").name == "epoch-0003.json"
    load_model(tmp_path / "checkpoints")
    with pytest.raises(ValueError, match="resume: needs a run_dir"):
        Trainer(epochs=1, progress=False).fit(make_model(train), train, resume=True)


def test_evaluate_follows_the_model_dtype(darcy_small, tmp_path):
    train, test = darcy_small
    model = make_model(train)
    trainer(tmp_path, 1, precision="fp64").fit(model, train)
    with torch.no_grad():
        expected = relative_l2(model(test.x.double()), test.y.double()).item()
    assert evaluate(model, test)["rel_l2"] == pytest.approx(expected, rel=1e-12)


def test_a_checkpoint_written_before_a_new_constructor_option_still_describes_the_model():
    # checkpoints written before FNO gained `dropout` lack the key: it counts as its default
    from probneural.train.trainer import _model_meta, _same_model

    model = FNO(1, 1, [4], width=8)
    saved = _model_meta(model)
    older = {**saved, "config": {k: v for k, v in saved["config"].items() if k != "dropout"}}
    assert _same_model(older, model)
    assert not _same_model(older, FNO(1, 1, [4], width=8, dropout=0.1))
    assert not _same_model({**saved, "config": {**saved["config"], "width": 16}}, model)
    # how the operator runs (CPU batch chunking) does not make it another model
    assert _same_model(saved, FNO(1, 1, [4], width=8, cpu_chunk_bytes=None))


def test_step_schedule_options_only_count_with_the_step_schedule(darcy_small, tmp_path):
    train, _ = darcy_small
    with pytest.warns(UserWarning, match=r"step_size=10 has no effect: step_size is only used with scheduler='step'"):
        cosine = trainer(tmp_path, 1, scheduler="cosine", step_size=10)
    assert "step_size" not in cosine.settings() and "gamma" not in cosine.settings()
    assert trainer(tmp_path, 1).settings()["step_size"] == 2  # the step schedule's own
    first = cosine.fit(make_model(train), train)
    with pytest.warns(UserWarning, match="gamma=0.25 has no effect"):  # a resume is not blocked by an inert change
        resumed = trainer(tmp_path, 2, scheduler="cosine", gamma=0.25)  # and step_size back at its default
    history = resumed.fit(make_model(train, seed=99), train, resume=True)
    assert history[0] == first[0] and [r["epoch"] for r in history] == [1, 2]  # epoch 1 restored, not retrained


def test_a_non_finite_gradient_with_a_finite_loss_stops_before_the_weights_change(darcy_small, tmp_path):
    train, _ = darcy_small
    model = make_model(train)
    trainer(tmp_path, 1).fit(model, train)
    good = latest_checkpoint(tmp_path / "checkpoints")
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    next(model.parameters()).register_hook(lambda grad: grad * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"gradient norm is nan with a finite training loss .* epoch 2, step 1"):
        trainer(tmp_path, 3).fit(model, train, resume=True)
    assert latest_checkpoint(tmp_path / "checkpoints") == good
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name]), name


def test_resume_refuses_other_values_behind_the_same_metadata_and_accepts_older_checkpoints(
        darcy_small, tmp_path, monkeypatch):
    train, _ = darcy_small
    trainer(tmp_path / "a", 1).fit(make_model(train), train)
    other = OperatorDataset(train.x, 2 * train.y, train.grid, metadata=train.metadata)
    with pytest.raises(ValueError, match="resume: .* was trained on other data"):
        trainer(tmp_path / "a", 2).fit(make_model(train), other, resume=True)
    # a checkpoint from before the values digest records only size, shapes and metadata: still resumable
    identity = trainer_module._data_identity
    monkeypatch.setattr(trainer_module, "_data_identity",
                        lambda dataset: {k: v for k, v in identity(dataset).items() if k != "values_sha256"})
    trainer(tmp_path / "b", 1).fit(make_model(train), train)
    monkeypatch.undo()
    assert trainer(tmp_path / "b", 2).check_resume(make_model(train), train) == 1
    assert trainer(tmp_path / "c", 2).check_resume(make_model(train), train) == 0  # nothing to resume yet


def test_resume_accepts_the_same_values_computed_by_another_implementation(darcy_small, tmp_path):
    # metadata["implementation"] (which FFT library, which machine) is not the data: the values' checksum is
    train, _ = darcy_small
    here = OperatorDataset(train.x, train.y, train.grid, metadata={**train.metadata, "implementation": {"fft": "a"}})
    elsewhere = OperatorDataset(train.x, train.y, train.grid, metadata={**train.metadata, "implementation": {"fft": "b"}})
    trainer(tmp_path, 1).fit(make_model(train), here)
    assert trainer(tmp_path, 2).check_resume(make_model(train), elsewhere) == 1


def test_load_model_takes_auto_and_evaluate_names_a_precision_the_model_is_not_in(darcy_small, tmp_path):
    train, test = darcy_small
    trainer(tmp_path, 1).fit(make_model(train), train)
    model = load_model(tmp_path / "checkpoints", map_location="auto")
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match=r"precision: 'fp64' computes with torch.float64 parameters, but the model's"):
        evaluate(model, test, precision="fp64")
