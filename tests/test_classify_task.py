"""ClassificationTask against the task protocol of npgpt's training loop (npgpt/tasks.py)."""
import numpy as np
import pytest

from npgpt.classify_task import ClassificationTask, classifier_from_checkpoint
from npgpt.errors import UserError
from npgpt.train import TrainConfig


def make_task(tmp_path, **settings):
    cfg = TrainConfig(out=str(tmp_path), n_layer=1, n_head=2, n_embd=16, block_size=24, batch_size=6,
                      backend="numpy", dtype="float64", **settings)
    return ClassificationTask.build(cfg, lm_weight=0.5)


def test_batches_come_from_the_given_generator_only(tmp_path):
    task = make_task(tmp_path)
    a = task.draw_batch(np.random.default_rng(3))
    b = task.draw_batch(np.random.default_rng(3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    idx, lengths, labels = a
    assert idx.shape == (6, lengths.max()) and lengths.max() <= 24 and labels.dtype.kind == "i"


def test_loss_and_grad_overwrites_the_gradient_buffer(tmp_path):
    """The loop reuses its buffer: a stale gradient left in it must not leak into the next one."""
    task = make_task(tmp_path)
    batch = task.draw_batch(np.random.default_rng(0))
    clean = np.zeros(task.model.num_params)
    dirty = np.full(task.model.num_params, 7.0)
    loss_a = task.loss_and_grad(batch, clean, None)
    loss_b = task.loss_and_grad(batch, dirty, None)
    assert loss_a == loss_b
    np.testing.assert_array_equal(dirty, clean)
    assert np.abs(clean[-task.model.num_labels * 16:]).sum() > 0  # the head's gradient is there


def test_evaluation_is_deterministic_and_leaves_training_rngs_alone(tmp_path):
    task = make_task(tmp_path)
    first, second = task.evaluate(), task.evaluate()
    assert first == second
    assert set(first) == {"val_loss", "val_accuracy", "val_macro_f1"}
    assert 0 < first["val_loss"] < 5


def test_describe_prints_class_counts(tmp_path):
    text = make_task(tmp_path).describe()
    assert "36 training texts" in text and "(neg 18, pos 18)" in text and "4 validation (neg 2, pos 2)" in text


def test_a_checkpoint_with_another_task_is_refused(tmp_path):
    from npgpt.checkpoint import Checkpoint

    ckpt = Checkpoint(str(tmp_path), {}, {}, {}, {}, {"task": {"name": "seq2seq"}})
    with pytest.raises(UserError, match="holds no classifier"):
        classifier_from_checkpoint(ckpt)
