"""Resumable collection: a run interrupted mid-way and resumed from its checkpoint gives exactly the
rows of an uninterrupted one; a checkpoint of other settings is refused and kept; broken images are
counted, not lost."""

from __future__ import annotations

import shutil

import pytest
import torch

from convscope.concepts import collect_activations, fit_concepts
from convscope.errors import ConvscopeError, UserInputError

from .conftest import LAYER

# 12 images in batches of 2 (6 batches), a reservoir smaller than the positions offered, so that
# slots are replaced after the interruption too
SETTINGS = dict(per_image=8, max_samples=40, seed=3, batch_size=2, workers=0)


class Stop(Exception):
    pass


def stop_after(images: int):
    def progress(done, total):
        if done >= images:
            raise Stop

    return progress


def test_an_interrupted_collection_resumes_to_the_same_rows(subject, folder, tmp_path):
    whole = collect_activations(subject, folder, LAYER, **SETTINGS)
    ckpt = tmp_path / "acts.ckpt"
    with pytest.raises(Stop):
        collect_activations(
            subject, folder, LAYER, checkpoint=ckpt, checkpoint_every=0, progress=stop_after(6), **SETTINGS
        )
    assert ckpt.exists()
    saved = torch.load(ckpt, weights_only=True)
    assert saved["position"] == 6 and saved["reservoir"]["seen"] == 6 * 8  # stopped half-way
    calls = []
    resumed = collect_activations(
        subject,
        folder,
        LAYER,
        checkpoint=ckpt,
        resume=True,
        progress=lambda d, t: calls.append(d),
        **SETTINGS,
    )
    assert calls == [6, 8, 10, 12]  # started where the checkpoint was, not from 0
    assert torch.equal(resumed.x, whole.x) and torch.equal(resumed.where, whole.where)
    assert (resumed.seen, resumed.images, resumed.grid) == (whole.seen, 12, whole.grid)
    # the checkpoint now holds the finished collection: resuming again reads no image
    calls.clear()
    again = collect_activations(
        subject,
        folder,
        LAYER,
        checkpoint=ckpt,
        resume=True,
        progress=lambda d, t: calls.append(d),
        **SETTINGS,
    )
    assert calls == [12] and torch.equal(again.x, whole.x)


def test_without_resume_the_checkpoint_is_started_afresh(subject, folder, tmp_path):
    ckpt = tmp_path / "acts.ckpt"
    with pytest.raises(Stop):
        collect_activations(
            subject, folder, LAYER, checkpoint=ckpt, checkpoint_every=0, progress=stop_after(4), **SETTINGS
        )
    fresh = collect_activations(subject, folder, LAYER, checkpoint=ckpt, **SETTINGS)
    whole = collect_activations(subject, folder, LAYER, **SETTINGS)
    assert torch.equal(fresh.x, whole.x)
    assert torch.load(ckpt, weights_only=True)["position"] == 12


def test_a_checkpoint_of_other_settings_is_refused_and_kept(subject, folder, tmp_path):
    ckpt = tmp_path / "acts.ckpt"
    with pytest.raises(Stop):
        collect_activations(
            subject, folder, LAYER, checkpoint=ckpt, checkpoint_every=0, progress=stop_after(4), **SETTINGS
        )
    before = ckpt.read_bytes()
    for change in ({"seed": 4}, {"max_samples": 41}, {"per_image": 4}, {"batch_size": 4}):
        with pytest.raises(ConvscopeError, match="other settings") as e:
            collect_activations(
                subject, folder, LAYER, checkpoint=ckpt, resume=True, **{**SETTINGS, **change}
            )
        assert "\n" not in str(e.value) and next(iter(change)) in str(e.value)
    with pytest.raises(ConvscopeError, match="other settings.*layer"):
        collect_activations(subject, folder, "conv2", checkpoint=ckpt, resume=True, **SETTINGS)
    with pytest.raises(ConvscopeError, match="other settings.*indices"):
        collect_activations(
            subject, folder, LAYER, checkpoint=ckpt, resume=True, indices=range(10), **SETTINGS
        )
    assert ckpt.read_bytes() == before  # nothing lost
    other = tmp_path / "other.ckpt"
    torch.save({"something": 1}, other)
    with pytest.raises(UserInputError, match="not an activations checkpoint"):
        collect_activations(subject, folder, LAYER, checkpoint=other, resume=True, **SETTINGS)
    other.write_bytes(b"not a torch file")
    with pytest.raises(UserInputError, match="cannot resume.*left as it is"):
        collect_activations(subject, folder, LAYER, checkpoint=other, resume=True, **SETTINGS)
    assert other.read_bytes() == b"not a torch file"


def test_broken_images_are_counted(subject, folder, tmp_path):
    data = tmp_path / "with-broken"
    shutil.copytree(folder, data)
    (data / "im05.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # sorts between im05.png and im06
    acts = collect_activations(subject, data, LAYER, per_image=8, max_samples=1000, workers=0)
    assert acts.images == 12 and len(acts.skipped) == 1 and acts.seen == 12 * 8
    index, reason = acts.skipped[0]
    assert reason and index not in set(acts.where[:, 0].tolist())
    # and a resumed run keeps the skips it saw before the interruption
    ckpt = tmp_path / "acts.ckpt"
    with pytest.raises(Stop):
        collect_activations(
            subject, data, LAYER, checkpoint=ckpt, checkpoint_every=0, progress=stop_after(8), **SETTINGS
        )
    resumed = collect_activations(subject, data, LAYER, checkpoint=ckpt, resume=True, **SETTINGS)
    assert resumed.skipped == acts.skipped and resumed.images == 12


def test_fit_concepts_passes_the_checkpoint_through(subject, folder, tmp_path):
    ckpt = tmp_path / "acts.ckpt"
    options = dict(per_image=8, max_samples=40, seed=3, batch_size=2, workers=0, max_iter=50)
    with pytest.raises(Stop):
        fit_concepts(
            subject,
            folder,
            LAYER,
            "nmf",
            3,
            checkpoint=ckpt,
            checkpoint_every=0,
            progress=stop_after(6),
            **options,
        )
    resumed = fit_concepts(subject, folder, LAYER, "nmf", 3, checkpoint=ckpt, resume=True, **options)
    whole = fit_concepts(subject, folder, LAYER, "nmf", 3, **options)
    assert torch.equal(resumed.dictionary, whole.dictionary)


def test_the_concept_set_counts_the_skipped_images(subject, folder, tmp_path):
    data = tmp_path / "with-broken"
    shutil.copytree(folder, data)
    (data / "zz.jpg").write_bytes(b"not an image")
    cs = fit_concepts(subject, data, LAYER, "pca", 2, per_image=4, workers=0)
    assert cs.images == 12 and len(cs.skipped) == 1 and "zz.jpg" not in str(cs.skipped[0][0])
    assert "1 unreadable images skipped" in cs.headline()
