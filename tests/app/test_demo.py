from __future__ import annotations

from types import SimpleNamespace

from convscope.app.demo import best_labels, scan_layers


def test_demo_scans_the_convolution_before_the_saturating_activation(default_subject):
    # bn2 (BatchNorm + ReLU6) saturates at 6.0: its top scores tie; conv_head feeds it
    assert scan_layers(default_subject) == ["blocks.2", "blocks.4", "conv_head", "classifier"]


def test_best_labels_leave_out_too_broad_units():
    labs = [
        SimpleNamespace(unit=0, iou=0.9, too_broad=True),
        SimpleNamespace(unit=1, iou=0.2, too_broad=False),
        SimpleNamespace(unit=2, iou=0.5, too_broad=False),
        SimpleNamespace(unit=3, iou=0.1, too_broad=False),
    ]
    assert [lab.unit for lab in best_labels(labs)] == [2, 1]
