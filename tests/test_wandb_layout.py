"""How runs appear in wandb: instance names, groups and job types, scores, sweeps, artifacts."""

from __future__ import annotations

from sae.run.instance_names import instance_labels, name_instances
from toymodels.config import ToyConfig
from toymodels.lightning_module import toy_instance_labels


def test_instances_are_named_by_the_sweep_values_that_differ():
    assert instance_labels({"l1": [0.1, 0.5], "lr": [1e-3, 1e-3], "seed": [0, 0]}) == [
        "l1=0.1",
        "l1=0.5",
    ]
    assert instance_labels({"l1": [0.3, 0.3], "lr": [1e-3, 1e-2], "seed": [0, 1]}) == [
        "lr=0.001,seed=0",
        "lr=0.01,seed=1",
    ]
    # one instance: every value; identical instances: the index too
    assert instance_labels({"l1": [0.3], "lr": [1e-3], "seed": [0]}) == ["l1=0.3,lr=0.001,seed=0"]
    assert instance_labels({"l1": [0.3, 0.3]}) == ["l1=0.3,instance=0", "l1=0.3,instance=1"]


def test_instance_keys_are_renamed_and_others_kept():
    record = {"step": 9, "loss/instance_1": 1.0, "train/loss": 2.0, "final/l0/instance_0": 3}
    assert name_instances(record, ["l1=0.1", "l1=0.5"]) == {
        "step": 9,
        "loss/l1=0.5": 1.0,
        "train/loss": 2.0,
        "final/l0/l1=0.1": 3,
    }
    assert name_instances(record, None) == record


def test_toy_instances_follow_the_data_order():
    config = ToyConfig()
    config.data.feature_probability = [0.1, 0.01]
    config.data.repeats = 2
    assert toy_instance_labels(config) == [
        "p=0.1,repeat=0",
        "p=0.1,repeat=1",
        "p=0.01,repeat=0",
        "p=0.01,repeat=1",
    ]
    assert toy_instance_labels(config, restarts=2)[:3] == [
        "p=0.1,repeat=0,restart=0",
        "p=0.1,repeat=0,restart=1",
        "p=0.1,repeat=1,restart=0",
    ]
