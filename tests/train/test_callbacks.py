"""Callbacks: what the metrics logger writes (JSONL and TensorBoard, train and validation), what the progress bar
shows, the speed monitor's measured peak."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kamado.model.transformer import Transformer
from kamado.train import callbacks as cb_module
from kamado.train.callbacks import MetricsLogger, ProgressBar, SpeedMonitor
from kamado.train.trainer import Trainer


def _val(loader_cls, cfg):
    def batches():
        loader = loader_cls(cfg.model.vocab_size, 2, cfg.data.seq_len, seed=99)
        return iter([loader.next_batch() for _ in range(2)])

    return batches


def _trainer(cfg, loader_cls, callbacks, val=True):
    torch.manual_seed(cfg.train.seed)
    loader = loader_cls(cfg.model.vocab_size, cfg.train.batch_size, cfg.data.seq_len)
    out = Path(cfg.out_dir)
    return Trainer(cfg, Transformer(cfg.model), loader, out, _val(loader_cls, cfg) if val else None, callbacks)


def _scalars(run: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_metrics_logger_writes_train_and_validation_rows_and_scalars(tiny_cfg, loader_cls):
    tiny_cfg.train.steps, tiny_cfg.train.eval_every = 10, 4
    t = _trainer(tiny_cfg, loader_cls, [SpeedMonitor(), MetricsLogger(tiny_cfg.out_dir, tensorboard=True)])
    t.fit()
    run = Path(tiny_cfg.out_dir)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r for r in rows if "val_ce" in r}
    train = {r["step"]: r for r in rows if "loss" in r}
    assert sorted(val) == [4, 8, 10] and sorted(train) == list(range(1, 11))
    assert all(math.isclose(math.exp(r["val_ce"]), r["val_ppl"], rel_tol=1e-9) for r in val.values())
    tb = _scalars(run)
    assert {"val/val_ce", "val/val_ppl"} <= set(tb) and "val/step" not in tb
    for step, r in val.items():  # each value at its own step
        assert tb["val/val_ce"][step] == pytest.approx(r["val_ce"], rel=1e-6)
        assert tb["val/val_ppl"][step] == pytest.approx(r["val_ppl"], rel=1e-6)
    assert sorted(tb["val/val_ce"]) == [4, 8, 10]
    # training scalars on logging steps only (those carry tokens/s), never the step itself as a scalar
    assert sorted(tb["train/loss"]) == [5, 10] and "train/step" not in tb
    assert tb["train/loss"][5] == pytest.approx(train[5]["loss"], rel=1e-6)
    assert tb["train/mfu"][10] == pytest.approx(train[10]["mfu"], rel=1e-6)


def test_progress_bar_shows_the_step_loss_speed_and_events(tiny_cfg, loader_cls, capsys):
    tiny_cfg.train.steps = 10
    bar = ProgressBar()
    t = _trainer(tiny_cfg, loader_cls, [SpeedMonitor(), bar], val=False)
    t.fit()
    t._emit({"event": "skip_update", "loss": 9.5})
    out = capsys.readouterr().out
    assert "10/10" in out and "train" in out
    assert bar.progress.tasks[0].completed == 10 and bar.progress.tasks[0].total == 10
    info = bar.progress.tasks[0].fields["info"]
    assert info.startswith("loss ") and " tok/s | MFU " in info and info.endswith("%")
    assert "skip_update: {'step': 10, 'loss': 9.5}" in out


def test_progress_bar_of_a_resumed_run_starts_at_the_restored_step(tiny_cfg, loader_cls):
    tiny_cfg.train.steps = 10
    _trainer(tiny_cfg, loader_cls, [cb_module.Checkpointer()], val=False).fit()
    tiny_cfg.train.steps = 12
    bar = ProgressBar()
    seen = []

    class Watch(cb_module.Callback):
        def on_train_start(self, trainer):
            seen.append(bar.progress.tasks[0].completed)

    _trainer(tiny_cfg, loader_cls, [bar, Watch()], val=False).fit()
    assert seen == [10] and bar.progress.tasks[0].total == 12


def test_speed_monitor_measures_the_peak_when_none_is_configured(tiny_cfg, loader_cls, monkeypatch):
    calls = []

    def fake_peak(dtype, device):
        calls.append((dtype, str(device)))
        return 123e9

    monkeypatch.setattr(cb_module, "measure_matmul_peak", fake_peak)
    tiny_cfg.train.steps, tiny_cfg.train.peak_flops, tiny_cfg.train.dtype = 5, 0, "fp32"
    t = _trainer(tiny_cfg, loader_cls, [SpeedMonitor()], val=False)
    t.fit()
    assert calls == [(torch.float32, "cpu")] and t.peak_flops == 123e9
    tiny_cfg.train.dtype = "bf16"
    SpeedMonitor().on_train_start(_trainer(tiny_cfg, loader_cls, [], val=False))
    assert calls[-1] == (torch.bfloat16, "cpu")


def test_progress_bar_line_reads_train_bar_count_time_and_the_step_info():
    """The rendered line, column by column: the label, the bar, done/total, time left, then loss | tok/s | MFU."""
    from types import SimpleNamespace

    from rich.console import Console

    def line(bar: ProgressBar) -> str:
        console = Console(record=True, width=160, color_system=None)
        console.print(bar.progress.make_tasks_table(bar.progress.tasks))
        return console.export_text().strip()

    trainer = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(steps=10)), step=3)
    bar = ProgressBar()
    bar.on_train_start(trainer)
    bar.progress.stop()
    assert re.fullmatch(r"train ━+\s+3/10 -:--:--", line(bar)), line(bar)  # nothing after the time yet
    trainer.step = 4
    bar.on_step_end(trainer, {"loss": 1.23456, "tokens_per_s": 1234.4, "mfu": 0.1234})
    assert bar.progress.tasks[0].completed == 4
    assert re.fullmatch(r"train ━+\s+4/10 \S+ loss 1\.235 \| 1234 tok/s \| MFU 12\.3%", line(bar)), line(bar)
    bar.on_step_end(trainer, {"loss": 2.0})  # no speed yet (the first steps): the loss alone
    assert line(bar).endswith(" loss 2.000")


def test_truncate_jsonl_keeps_rows_up_to_the_step_and_drops_torn_and_non_object_lines(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    rows = '{"step": 1, "loss": 2.0}\n{"step": 2}\n{"step": 3}\n7\n["x"]\n{"note": "no step"}\n{"step": 2, "lo'
    path.write_text(rows, "utf-8")  # 4 intact rows, 3 torn or not objects
    cb_module.truncate_jsonl(path, 2)
    assert path.read_text("utf-8") == '{"step": 1, "loss": 2.0}\n{"step": 2}\n{"note": "no step"}\n'
    assert "dropped 3 torn line(s)" in capsys.readouterr().err
    cb_module.truncate_jsonl(path, 0)  # rows without a step are kept at any step
    assert path.read_text("utf-8") == '{"note": "no step"}\n'


def test_a_configured_peak_is_used_as_it_is(tiny_cfg, loader_cls, monkeypatch):
    monkeypatch.setattr(cb_module, "measure_matmul_peak", lambda dtype, device: pytest.fail("measured"))
    tiny_cfg.train.peak_flops = 1.0  # any positive value is the user's: even 1 flop/s
    t = _trainer(tiny_cfg, loader_cls, [], val=False)
    SpeedMonitor().on_train_start(t)
    assert t.peak_flops == 1.0


def test_stability_events_reach_every_callback_with_the_trainer_and_the_step(tiny_cfg, loader_cls):
    seen = []

    class Watch(cb_module.Callback):
        def on_event(self, trainer, event):
            seen.append((trainer, event))

    t = _trainer(tiny_cfg, loader_cls, [Watch(), Watch()], val=False)
    t.step = 7
    t._emit({"event": "rollback", "to": 4})
    assert seen == [(t, {"step": 7, "event": "rollback", "to": 4})] * 2


def test_truncate_jsonl_drops_a_tail_torn_inside_a_utf8_character(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes('{"step": 1, "note": "猫"}\n'.encode() + '{"step": 2, "note": "猫'.encode()[:-2])
    cb_module.truncate_jsonl(path, 5)
    assert path.read_text("utf-8") == '{"step": 1, "note": "猫"}\n'
    assert "dropped 1 torn line(s)" in capsys.readouterr().err


def test_a_resumed_logger_rewrites_history_after_its_step_in_jsonl_and_tensorboard(tmp_path):
    """Resuming at step 3 (after a rollback or a kill): metrics.jsonl and TensorBoard keep steps 1-3 of the first
    run and steps 4-5 of the second, never both runs' step 4. The run folder's parents are made as needed."""
    from types import SimpleNamespace

    out = tmp_path / "a" / "b" / "run"

    def run(start: int, loss: float) -> None:
        t = SimpleNamespace(step=start)
        logger = MetricsLogger(out)
        logger.on_train_start(t)
        for step in range(start + 1, 6):
            t.step = step
            logger.on_step_end(t, {"step": step, "loss": loss + step, "tokens_per_s": 1.0})
        logger.on_train_end(t)

    run(0, 10.0)
    run(3, 20.0)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 24.0), (5, 25.0)]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()  # the second writer's purge_step hides the first run's steps 4 and 5
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 11), (2, 12), (3, 13), (4, 24), (5, 25)]


@pytest.mark.parametrize(("every", "want"), [(1, [1, 2, 3, 4, 5]), (2, [2, 4, 5]), (0, [5])])
def test_checkpointer_saves_every_n_steps_and_at_the_end(tiny_cfg, loader_cls, every, want):
    """`checkpoint.every = 1` saves after every step (mutmut: `every > 1` let it save only at the end)."""
    tiny_cfg.train.steps, tiny_cfg.checkpoint.every, tiny_cfg.checkpoint.keep_last = 5, every, 0
    tiny_cfg.stability.enabled = False  # no step-0 rollback target
    _trainer(tiny_cfg, loader_cls, [cb_module.Checkpointer()], val=False).fit()
    saved = sorted(int(p.name.split("_")[1]) for p in (Path(tiny_cfg.out_dir) / "checkpoints").glob("step_*"))
    assert saved == want


def test_speed_monitor_counts_every_device_of_a_distributed_run(tiny_cfg, loader_cls):
    """MFU is over all devices: a trainer with world_size 4 has 4 times the peak (tokens/s are global)."""
    tiny_cfg.train.peak_flops = 1e9
    t = _trainer(tiny_cfg, loader_cls, [], val=False)
    one = SpeedMonitor()
    one.on_train_start(t)
    t.world_size = 4
    four = SpeedMonitor()
    four.on_train_start(t)
    assert one.meter.peak_flops == 1e9 and four.meter.peak_flops == 4e9
