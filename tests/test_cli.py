"""The ``sela`` command, model files, image folders and plotting helpers.

Most tests call :func:`sklearn_sela.cli.main` in-process (one interpreter,
torch imported once); a few run the installed command as a subprocess to
check the entry points themselves. Training runs are tiny (a few 12x12
images, one or two epochs).
"""

import csv
import inspect
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.exceptions import NotFittedError

from sklearn_sela import SelfLabelClusterer
from sklearn_sela import cli, data
from sklearn_sela.cli import build_parser, main
from sklearn_sela.cli import fit as cli_fit
from sklearn_sela.cli.options import EXCLUDED, format_value, given_params
from sklearn_sela.data import ImageFiles, check_image_files, find_image_files
from sklearn_sela.persistence import ModelFileError, load_model, model_params, save_model
from sklearn_sela.plotting import cluster_montage, plot_cluster_montage, plot_label_nmi

N_GOOD = 36  # readable images in the test folder




def _png(path, value, size=(12, 12), mode="L"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(value)
    shape = size[::-1] if mode == "L" else size[::-1] + (3,)
    base = np.full(shape, 40 * (value % 6), dtype=np.uint8)
    noise = rng.integers(0, 30, size=shape, dtype=np.uint8)
    Image.fromarray(base + noise, mode=None).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Class sub-folders, nesting, bad files, hidden files, a text file."""
    root = tmp_path_factory.mktemp("images")
    for i in range(N_GOOD):
        sub = f"class{i % 3}" + ("/deeper" if i % 4 == 0 else "")
        _png(str(root / sub / f"img{i:02d}.png"), i)
    (root / "broken.png").write_bytes(b"this is not an image")
    good = (root / "class0" / "img03.png").read_bytes()
    (root / "class1" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    _png(str(root / ".hidden" / "x.png"), 1)
    _png(str(root / "class0" / ".x.png"), 2)
    return root


@pytest.fixture(scope="module")
def fitted(folder, tmp_path_factory):
    """One `sela fit` run on the folder, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("run")
    status = main([
        "fit", str(folder), "--n-clusters", "3,4", "--max-epochs", "2",
        "--batch-size", "16", "--random-state", "0", "--out", str(out), "--features",
        "--score-folders", "-q",
    ])
    assert status == 0
    return out


def _run(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _assert_user_error(capsys, argv, match):
    status, out, err = _run(capsys, *argv)
    assert status == 1, (out, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("sela: error:")]
    assert len(lines) == 1, err
    assert match in lines[0], lines[0]


# -- image folders ----------------------------------------------------------------


def test_find_image_files_walks_any_nesting(folder):
    paths = find_image_files(folder)
    names = [os.path.relpath(p, folder) for p in paths]
    assert len(paths) == N_GOOD + 2  # plus broken.png and truncated.png
    assert names == sorted(names)
    assert os.path.join("class0", "deeper", "img00.png") in names
    assert not any(part.startswith(".") for n in names for part in n.split(os.sep))
    assert not any(n.endswith(".txt") for n in names)


def test_find_image_files_extension_case(tmp_path):
    _png(str(tmp_path / "A.PNG"), 0)
    assert find_image_files(tmp_path) == [str(tmp_path / "A.PNG")]


def test_check_image_files_sorts_out_bad_files(folder):
    good, skipped, sizes, modes = check_image_files(find_image_files(folder), n_jobs=2)
    assert len(good) == N_GOOD
    assert {os.path.basename(p) for p, _ in skipped} == {"broken.png", "truncated.png"}
    assert all(reason for _, reason in skipped)
    assert set(sizes) == {(12, 12)} and set(modes) == {"L"}
    # verify() alone does not decode pixel data; the truncated PNG is still
    # caught by its structure check.
    _, skipped_header, _, _ = check_image_files(find_image_files(folder), full=False)
    assert "broken.png" in {os.path.basename(p) for p, _ in skipped_header}


def test_image_files_dataset(folder):
    paths = [p for p in find_image_files(folder) if "img" in os.path.basename(p)][:3]
    ds = ImageFiles(paths, mode="RGB")
    assert len(ds) == 3
    assert ds[1].mode == "RGB" and ds[1].size == (12, 12)
    assert ImageFiles(paths, mode="L")[0].mode == "L"
    clone = pickle.loads(pickle.dumps(ds))  # for DataLoader workers
    assert clone.paths == ds.paths
    with pytest.raises(ValueError):
        ImageFiles(paths, mode="CMYK")


def test_common_mode_is_grey_only_when_every_file_is():
    assert ImageFiles.common_mode(["L", "I;16", "1", "LA"]) == "L"
    assert ImageFiles.common_mode(["L", "RGB"]) == "RGB"
    assert ImageFiles.common_mode(["L", "P"]) == "RGB"  # palettes may hold colour


def test_image_folder_names_still_importable_from_cli():
    # They moved to sklearn_sela.data; sklearn_sela.cli re-exports them.
    assert cli.ImageFiles is data.ImageFiles
    for name in ("find_image_files", "check_image_files", "IMAGE_EXTENSIONS"):
        assert getattr(cli, name) is getattr(data, name)
        assert name in cli.__all__


# -- sela fit ------------------------------------------------------------------------


def test_fit_writes_all_outputs(fitted, folder):
    names = set(os.listdir(fitted))
    assert {"labels.csv", "model.pt", "features.npy", "summary.json", "label_nmi.png",
            "montage.png"} <= names
    # One montage, of the estimator's clusters: none per head any more.
    assert not any(n.startswith("montage_head") for n in names)
    with open(fitted / "labels.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "cluster", "label_0", "label_1"]
    assert len(rows) == N_GOOD + 1
    paths = [r[0] for r in rows[1:]]
    assert paths == sorted(paths) and all(os.path.isfile(p) for p in paths)
    est = load_model(fitted / "model.pt")
    # The cluster column is labels_, which is predict() of the training data:
    # head head_'s most probable cluster.
    clusters = [int(r[1]) for r in rows[1:]]
    assert clusters == est.labels_.tolist()
    assert clusters == est.predict(ImageFiles(paths, "L")).tolist()
    # Only head 0 has the first head's K (3 clusters): it is the one chosen.
    assert est.head_ == 0
    # The label_t columns are each head's last self-labels (training targets).
    head_labels = np.array([[int(v) for v in r[2:]] for r in rows[1:]])
    np.testing.assert_array_equal(head_labels, est.labels_all_)
    assert set(head_labels[:, 0]) <= {0, 1, 2} and set(head_labels[:, 1]) <= {0, 1, 2, 3}
    summary = json.loads((fitted / "summary.json").read_text())
    assert "labels_from" not in summary["clusters"]
    assert summary["clusters"]["head"] == est.head_
    assert summary["clusters"]["n_clusters"] == est.n_clusters_[est.head_] == 3
    assert summary["clusters"]["cluster_sizes"] == np.bincount(clusters, minlength=3).tolist()
    assert summary["outputs"]["montage"] == "montage.png"
    features = np.load(fitted / "features.npy")
    assert features.shape[0] == N_GOOD and features.dtype == np.float32
    for png in ("montage.png", "label_nmi.png"):
        with Image.open(fitted / png) as im:
            assert im.format == "PNG" and im.size[0] > 100


def test_fit_summary(fitted):
    summary = json.loads((fitted / "summary.json").read_text())
    assert summary["input"]["n_samples"] == N_GOOD
    assert summary["input"]["files_found"] == N_GOOD + 2
    assert {os.path.basename(s["path"]) for s in summary["input"]["skipped"]} == {
        "broken.png", "truncated.png"
    }
    assert summary["input"]["sample_shape"] == [1, 12, 12]
    params = summary["parameters"]
    assert params["n_clusters"] == [3, 4] and params["max_epochs"] == 2
    assert params["batch_size"] == 16 and params["random_state"] == 0
    assert summary["seed"] == 0 and summary["n_epochs"] == 2
    assert set(summary["time_s"]) == {"reading", "fit", "total"}
    heads = summary["heads"]
    assert [h["n_clusters"] for h in heads] == [3, 4]
    assert all(sum(h["cluster_sizes"]) == N_GOOD for h in heads)
    assert all("scores_vs_folders" in h for h in heads)
    updates = summary["label_updates"]
    assert updates and updates[0]["epoch"] == 0
    assert all(len(u["sinkhorn_iter"]) == 2 and min(u["sinkhorn_iter"]) >= 1 for u in updates)
    assert summary["outputs"]["model"] == "model.pt"


def test_fit_reports_skipped_files_on_stderr(folder, tmp_path, capsys):
    status, out, err = _run(capsys, "fit", str(folder), "--n-clusters", "3", "--max-epochs", "1",
                            "--batch-size", "16", "--out", str(tmp_path))
    assert status == 0
    assert "skipped 2 unreadable image file(s)" in err
    assert "broken.png" in err and "truncated.png" in err
    assert "(2 unreadable file(s) skipped)" in out
    assert "wrote" in out


def test_fit_arrays(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "tab.npy", rng.normal(size=(40, 5)).astype(np.float32))
    status, _, _ = _run(capsys, "fit", str(tmp_path / "tab.npy"), "--n-clusters", "4",
                        "--max-epochs", "1", "--out", str(tmp_path / "a"), "-q")
    assert status == 0
    with open(tmp_path / "a" / "labels.csv") as fh:
        rows = list(csv.reader(fh))
    # The clusters, then one column per head (the estimator's default, 10 heads).
    assert rows[0] == ["index", "cluster"] + [f"label_{t}" for t in range(10)]
    assert rows[1][0] == "0" and len(rows) == 41
    assert not any(n.startswith("montage") for n in os.listdir(tmp_path / "a"))
    # Predicting the training data gives back the clusters of labels.csv.
    status, _, err = _run(capsys, "predict", str(tmp_path / "a" / "model.pt"),
                          str(tmp_path / "tab.npy"), "--out", str(tmp_path / "p"), "-q")
    assert status == 0, err
    with open(tmp_path / "p" / "predictions.csv") as fh:
        predicted = list(csv.reader(fh))
    assert [r[1] for r in predicted] == [r[1] for r in rows]

    images = rng.integers(0, 255, size=(30, 10, 10), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", X=images, y=np.arange(30))
    status, _, _ = _run(capsys, "fit", str(tmp_path / "imgs.npz"), "--n-clusters", "3",
                        "--max-epochs", "1", "--out", str(tmp_path / "b"), "-q")
    assert status == 0  # picked the array named X
    montages = [n for n in os.listdir(tmp_path / "b") if n.startswith("montage")]
    assert montages == ["montage.png"]


def test_fit_head_options(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(40, 5)))
    runs = {
        "paper": ["--projection", "none", "--temperature", "none"],
        "custom": ["--projection", "16,8", "--temperature", "0.2", "--lam", "3",
                   "--label-neighbors", "4"],
        "default": [],
    }
    for name, options in runs.items():
        status, _, err = _run(capsys, "fit", str(tmp_path / "x.npy"), "--n-clusters", "3",
                              "--n-heads", "2", "--max-epochs", "1",
                              "--out", str(tmp_path / name), "-q", *options)
        assert status == 0, err
    params = {name: json.loads((tmp_path / name / "summary.json").read_text())["parameters"]
              for name in runs}
    assert (params["paper"]["projection"], params["paper"]["temperature"]) == (None, None)
    assert (params["custom"]["projection"], params["custom"]["temperature"]) == ([16, 8], 0.2)
    assert params["custom"]["lam"] == 3.0 and params["default"]["lam"] == "auto"
    assert params["default"]["projection"] == [512, 128]
    assert params["custom"]["label_neighbors"] == 4 and params["default"]["label_neighbors"] == 30
    assert load_model(tmp_path / "custom" / "model.pt").net_.label_neighbors == 4
    # The parameters written are exactly the estimator's.
    assert all(set(p) == set(SelfLabelClusterer().get_params()) for p in params.values())
    module = load_model(tmp_path / "custom" / "model.pt").net_.module_
    assert module.embed_dim == 8 and module.temperature == 0.2
    assert load_model(tmp_path / "paper" / "model.pt").net_.lam == 25.0


def test_fit_single_image_folder_with_image_size(tmp_path, capsys):
    for i, size in enumerate([(12, 12), (16, 10), (12, 12), (20, 20)]):
        _png(str(tmp_path / "mixed" / f"{i}.jpg"), i, size=size, mode="RGB")
    _assert_user_error(capsys, ["fit", str(tmp_path / "mixed"), "--n-clusters", "2",
                                "--max-epochs", "1"], "different sizes")
    status, _, err = _run(capsys, "fit", str(tmp_path / "mixed"), "--n-clusters", "2",
                          "--max-epochs", "1", "--image-size", "8,10",
                          "--out", str(tmp_path / "o"), "-q")
    assert status == 0, err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["input"]["sample_shape"] == [3, 8, 10]


def test_checkpoint_and_resume(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(40, 4)))
    base = ["fit", str(tmp_path / "x.npy"), "--n-clusters", "3", "--random-state", "0", "-q",
            "--out", str(tmp_path / "o")]
    _assert_user_error(capsys, base + ["--max-epochs", "2", "--resume"], "no checkpoint")
    assert main(base + ["--max-epochs", "2", "--checkpoint"]) == 0
    assert os.path.exists(tmp_path / "o" / "checkpoint" / "checkpoint.pt")
    _assert_user_error(capsys, base + ["--max-epochs", "2", "--checkpoint"], "--resume")
    # Another run's settings are refused, naming them (the schedule depends
    # on the number of epochs).
    _assert_user_error(capsys, base + ["--max-epochs", "3", "--resume"],
                       "max_epochs=2 there, 3 here")
    assert main(base + ["--max-epochs", "2", "--resume"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["n_epochs"] == 2


# -- predict / transform ---------------------------------------------------------------


def test_predict_and_transform_folder(fitted, folder, tmp_path, capsys):
    model = str(fitted / "model.pt")
    status, _, err = _run(capsys, "predict", model, str(folder), "--out", str(tmp_path),
                          "--proba")
    assert status == 0
    assert "broken.png" in err  # bad files are reported here too
    with open(tmp_path / "predictions.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "cluster", "label_0", "label_1"] and len(rows) == N_GOOD + 1
    est = load_model(model)
    paths = [r[0] for r in rows[1:]]
    images = ImageFiles(paths, "L")
    assert [int(r[1]) for r in rows[1:]] == est.predict(images).tolist()
    for t in range(2):
        assert [int(r[2 + t]) for r in rows[1:]] == est.predict(images, head=t).tolist()
    # The training folder again: its predicted clusters are those of labels.csv.
    with open(fitted / "labels.csv") as fh:
        assert [r[:2] for r in csv.reader(fh)] == [r[:2] for r in rows]
    proba = np.load(tmp_path / "probabilities_head1.npy")
    assert proba.shape == (N_GOOD, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    proba = np.load(tmp_path / "probabilities.npy")
    assert proba.shape == (N_GOOD, 3)
    # probabilities.npy is predict_proba: head head_'s probabilities.
    np.testing.assert_array_equal(proba, np.load(tmp_path / f"probabilities_head{est.head_}.npy"))
    np.testing.assert_allclose(proba, est.predict_proba(images), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(proba.argmax(axis=1), est.predict(images))

    status, _, _ = _run(capsys, "transform", model, str(folder / "class2"), "--out",
                        str(tmp_path / "t"), "--batch-size", "5")
    assert status == 0
    feats = np.load(tmp_path / "t" / "features.npy")
    with open(tmp_path / "t" / "features_index.csv") as fh:
        index = list(csv.reader(fh))[1:]
    assert feats.shape[0] == len(index) == 12
    images = ImageFiles([p for _, p in index], "L")
    # The raw backbone features. --batch-size 5 runs the network on other
    # batches than est.transform (batch size 16): a different batch
    # composition changes the float32 summation order inside the
    # convolutions, so the features agree to about 1e-5, not to the bit.
    np.testing.assert_allclose(feats, est.transform(images), rtol=1e-5, atol=1e-4)


def test_predict_resizes_and_converts_new_images(fitted, tmp_path, capsys):
    # RGB images of another size: converted to the model's grey 12x12.
    _png(str(tmp_path / "new" / "a.png"), 0, size=(30, 20), mode="RGB")
    _png(str(tmp_path / "new" / "b.jpg"), 1, size=(15, 15), mode="RGB")
    status, _, err = _run(capsys, "predict", str(fitted / "model.pt"), str(tmp_path / "new"),
                          "--out", str(tmp_path))
    assert status == 0, err
    status, _, err = _run(capsys, "predict", str(fitted / "model.pt"),
                          str(tmp_path / "new" / "a.png"), "--out", str(tmp_path / "one"))
    assert status == 0, err
    assert len(open(tmp_path / "one" / "predictions.csv").read().splitlines()) == 2


def test_predict_user_errors(fitted, folder, tmp_path, capsys):
    model = str(fitted / "model.pt")
    _assert_user_error(capsys, ["predict", str(tmp_path / "nope.pt"), str(folder)],
                       "does not exist")
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage")
    _assert_user_error(capsys, ["predict", str(tmp_path / "garbage.pt"), str(folder)],
                       "not a readable sklearn-sela model")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    _assert_user_error(capsys, ["transform", str(tmp_path / "other.pt"), str(folder)],
                       "not a sklearn-sela model")
    state = torch.load(model, weights_only=True)
    params = json.loads(state["params"])
    params["labels_from"] = "features"  # a parameter this version does not have
    state["params"] = json.dumps(params)
    torch.save(state, tmp_path / "foreign.pt")
    _assert_user_error(capsys, ["predict", str(tmp_path / "foreign.pt"), str(folder)],
                       "unknown parameter(s) labels_from")
    np.save(tmp_path / "small.npy", np.zeros((4, 8, 8), dtype=np.uint8))
    _assert_user_error(capsys, ["predict", model, str(tmp_path / "small.npy")], "8x8")
    np.save(tmp_path / "tab.npy", np.zeros((4, 3)))
    _assert_user_error(capsys, ["predict", model, str(tmp_path / "tab.npy")], "3 features")


def test_tabular_model_rejects_images(folder, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(30, 4)))
    assert main(["fit", str(tmp_path / "x.npy"), "--n-clusters", "2", "--max-epochs", "1", "-q",
                 "--out", str(tmp_path)]) == 0
    _assert_user_error(capsys, ["predict", str(tmp_path / "model.pt"), str(folder)],
                       "tabular data")


# -- errors and exit codes --------------------------------------------------------------


def test_user_errors_exit_1(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    _assert_user_error(capsys, ["fit", str(tmp_path / "empty")], "no image files found")
    _assert_user_error(capsys, ["fit", str(tmp_path / "missing")], "does not exist")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"nope")
    _assert_user_error(capsys, ["fit", str(tmp_path / "bad")], "could be read")
    (tmp_path / "data.csv").write_text("1,2\n")
    _assert_user_error(capsys, ["fit", str(tmp_path / "data.csv")], "neither")
    np.savez(tmp_path / "two.npz", a=np.zeros((5, 2)), b=np.zeros((5, 2)))
    _assert_user_error(capsys, ["fit", str(tmp_path / "two.npz")], "--key")
    _assert_user_error(capsys, ["fit", str(tmp_path / "two.npz"), "--key", "c"], "no array")
    np.save(tmp_path / "few.npy", np.zeros((5, 2)))
    _assert_user_error(capsys, ["fit", str(tmp_path / "few.npy"), "--n-clusters", "10",
                                "--max-epochs", "1", "--out", str(tmp_path / "o")],
                       "n_clusters=10")
    # What the estimator checks only when it fits names the option too.
    _assert_user_error(capsys, ["fit", str(tmp_path / "few.npy"), "--n-clusters", "2",
                                "--projection", "512,0", "--out", str(tmp_path / "o")],
                       "--projection: projection must be None or a non-empty sequence")
    _assert_user_error(capsys, ["fit", str(tmp_path / "few.npy"), "--n-clusters", "2",
                                "--backbone", "toaster", "--out", str(tmp_path / "o")],
                       "Unknown backbone 'toaster'")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _assert_user_error(capsys, ["fit", str(tmp_path / "obj.npy")], "cannot read array")
    if not torch.cuda.is_available():
        _assert_user_error(capsys, ["fit", str(tmp_path / "few.npy"), "--device", "cuda"],
                           "CUDA is not available")
    _assert_user_error(capsys, ["fit", str(tmp_path / "few.npy"), "--device", "toaster"],
                       "invalid --device")


@pytest.mark.parametrize("argv", [
    [],
    ["bogus"],
    ["fit"],
    ["fit", "x", "--n-clusters", "0"],
    ["fit", "x", "--n-clusters", "3,0"],
    ["fit", "x", "--n-clusters", "3.5"],
    ["fit", "x", "--max-epochs", "many"],
    ["fit", "x", "--image-size", "3x"],
    ["fit", "x", "--image-size", "8,0"],
    ["fit", "x", "--batch-size", "1"],
    ["fit", "x", "--projection", "wide"],
    ["fit", "x", "--temperature", "0"],
    ["fit", "x", "--lam", "sharp"],
    ["fit", "x", "--label-neighbors", "0"],
    ["fit", "x", "--lr-drops", "half"],
    ["fit", "x", "--augment", "strong"],
    ["fit", "x", "--random-state", "lucky"],
    # Parameters that have no option.
    ["fit", "x", "--callbacks", "none"],
    ["fit", "x", "--verbose", "1"],
    # Options of the former design are gone, not silently accepted.
    ["fit", "x", "-k", "3"],
    ["fit", "x", "--clusters", "3"],
    ["fit", "x", "--heads", "2"],
    ["fit", "x", "--epochs", "2"],
    ["fit", "x", "--label-updates", "2"],
    ["fit", "x", "--no-augment"],
    ["fit", "x", "--seed", "0"],
    ["fit", "x", "--workers", "2"],
    ["demo", "--heads", "2"],
    ["fit", "x", "--labels-from", "features"],
    ["fit", "x", "--no-whiten"],
    ["fit", "x", "--checkpoint-every", "2"],
    ["transform", "model.pt", "x", "--no-whiten"],
    ["fit", "x", "--no-such-option"],
    ["predict", "model.pt"],
    ["demo", "--n-heads", "0"],
])
def test_usage_errors_exit_2(argv, capsys):
    status, _, err = _run(capsys, *argv)
    assert status == 2
    assert "usage: sela" in err


def test_interrupt_and_internal_error(monkeypatch, tmp_path, capsys):
    def interrupted(args, saved):
        args.checkpoint_path = str(tmp_path)
        if saved:
            (tmp_path / "checkpoint.pt").write_bytes(b"")
        raise KeyboardInterrupt

    # Before the first checkpoint there is nothing to resume from.
    monkeypatch.setattr(cli_fit, "cmd_fit", lambda args: interrupted(args, saved=False))
    status, _, err = _run(capsys, "fit", "x", "--checkpoint")
    assert status == 130 and err.strip() == "sela: interrupted; no results were written"
    monkeypatch.setattr(cli_fit, "cmd_fit", lambda args: interrupted(args, saved=True))
    status, _, err = _run(capsys, "fit", "x", "--checkpoint")
    assert status == 130 and f"the checkpoint in {tmp_path}" in err and "--resume" in err

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_fit, "cmd_fit", broken)
    status, _, err = _run(capsys, "fit", "x")
    assert status == 1
    assert "Traceback" in err and "internal error" in err


def test_debug_shows_traceback(capsys):
    status, _, err = _run(capsys, "fit", "/no/such/folder", "--debug")
    assert status == 1 and "Traceback" in err and "sela: error:" in err


# -- options derived from the estimator ------------------------------------------------------


def _add_parameter(monkeypatch, name, default, constraints, doc):
    """Add a parameter to SelfLabelClusterer as its authors would -- in the
    signature of __init__, the constraints and the docstring -- and nowhere
    else."""
    init = SelfLabelClusterer.__init__
    signature = inspect.signature(init)

    def __init__(self, *args, **kwargs):
        value = kwargs.pop(name, default)
        init(self, *args, **kwargs)
        setattr(self, name, value)

    new = inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
    __init__.__signature__ = signature.replace(
        parameters=[*signature.parameters.values(), new])
    monkeypatch.setattr(SelfLabelClusterer, "__init__", __init__)
    monkeypatch.setattr(SelfLabelClusterer, "_parameter_constraints",
                        {**SelfLabelClusterer._parameter_constraints, name: constraints})
    heading = "    Attributes\n    ----------\n"
    entry = f"    {name} : float, default={default}\n        {doc}\n\n"
    monkeypatch.setattr(SelfLabelClusterer, "__doc__",
                        SelfLabelClusterer.__doc__.replace(heading, entry + heading))


def test_a_new_estimator_parameter_gets_an_option_without_a_cli_edit(monkeypatch, capsys):
    from numbers import Real

    from sklearn.utils._param_validation import Interval

    _add_parameter(monkeypatch, "knob_strength", 0.25, [Interval(Real, 0, None, closed="left")],
                   "How hard the ``knob`` turns (see :meth:`fit`). A second\n"
                   "        sentence, e.g. this one, is not shown.")
    assert "knob_strength" in SelfLabelClusterer().get_params()
    assert main(["fit", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--knob-strength FLOAT How hard the knob turns (see fit). (default: 0.25)" in text
    assert "second sentence" not in text
    # Parsed, checked by the estimator's constraints, passed on.
    args = build_parser().parse_args(["fit", "x", "--knob-strength", "2"])
    assert given_params(args) == {"knob_strength": 2.0}
    assert SelfLabelClusterer(**given_params(args)).get_params()["knob_strength"] == 2.0
    status, _, err = _run(capsys, "fit", "x", "--knob-strength", "-1")
    assert status == 2 and "argument --knob-strength: The 'knob_strength' parameter" in err


def test_every_estimator_parameter_has_an_option_with_its_default():
    parameters = SelfLabelClusterer().get_params()
    assert set(EXCLUDED) < set(parameters)  # the list names real parameters
    _, subs = _subparsers()
    actions = {a.dest: a for a in subs["fit"]._actions}
    derived = build_parser().parse_args(["fit", "x"]).estimator_params
    assert set(derived) == set(parameters) - set(EXCLUDED)
    for name in derived:
        action = actions[name]
        assert action.option_strings == ["--" + name.replace("_", "-")]
        assert action.help.endswith(f"(default: {format_value(parameters[name])})"), name
        assert not action.help.startswith(name.replace("_", " ")), name  # from the docstring
    for name in ("callbacks", "verbose"):
        assert name not in actions


def test_options_not_given_leave_the_estimator_defaults():
    parser = build_parser()
    assert given_params(parser.parse_args(["fit", "x"])) == {}
    # The demo's own default: a fixed seed.
    assert given_params(parser.parse_args(["demo"])) == {"random_state": 0}
    assert given_params(parser.parse_args(["predict", "m.pt", "x"])) == {
        "device": "auto", "num_workers": 0}


@pytest.mark.parametrize("option, value, says", [
    ("--n-heads", "0", "The 'n_heads' parameter of SelfLabelClusterer must be an int in the "
                       "range [1, inf). Got 0 instead."),
    ("--lr", "-1", "The 'lr' parameter of SelfLabelClusterer must be a float"),
    ("--n-clusters", "10,0", "The 'n_clusters' parameter"),
    ("--max-epochs", "many", "expected an integer or 'auto', got 'many'"),
    ("--lr-drops", "a,b", "expected comma-separated numbers, got 'a,b'"),
    ("--projection", "wide", "expected comma-separated integers or 'none', got 'wide'"),
])
def test_a_bad_value_is_one_line_naming_the_option(option, value, says, capsys):
    status, _, err = _run(capsys, "fit", "data.npy", option, value)
    assert status == 2
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"sela fit: error: argument {option}: "), errors[0]
    assert says in errors[0]


def test_option_values_reach_the_estimator_with_their_types():
    argv = ["fit", "x", "--n-clusters", "3,4", "--lr-drops", "0.5,0.8", "--image-size", "8,10",
            "--projection", "none", "--lr", "1", "--max-epochs", "auto", "--augment", "none",
            "--random-state", "7", "--backbone", "convnet", "--lam", "3", "--temperature", "0.2",
            "--weight-decay", "0"]
    params = SelfLabelClusterer(**given_params(build_parser().parse_args(argv))).get_params()
    expected = {"n_clusters": [3, 4], "lr_drops": (0.5, 0.8), "image_size": (8, 10),
                "projection": None, "lr": 1.0, "max_epochs": "auto", "augment": None,
                "random_state": 7, "backbone": "convnet", "lam": 3.0, "temperature": 0.2,
                "weight_decay": 0.0}
    for name, value in expected.items():
        assert params[name] == value and type(params[name]) is type(value), name
    assert all(type(v) is float for v in params["lr_drops"])
    assert all(type(v) is int for v in params["image_size"] + tuple(params["n_clusters"]))
    # One value where a number or a sequence is allowed.
    argv = ["fit", "x", "--n-clusters", "5", "--image-size", "64", "--lr-drops", "0.5",
            "--projection", "16"]
    assert given_params(build_parser().parse_args(argv)) == {
        "n_clusters": 5, "image_size": 64, "lr_drops": (0.5,), "projection": (16,)}
    # Cluster sizes: fractions, or a word.
    for text, value in [("0.75,0.25", [0.75, 0.25]), ("auto", "auto"), ("none", None)]:
        argv = ["fit", "x", "--cluster-proportions", text]
        assert given_params(build_parser().parse_args(argv)) == {"cluster_proportions": value}


# -- help ------------------------------------------------------------------------------------


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return parser, action.choices


def test_help_is_complete(capsys):
    parser, subs = _subparsers()
    assert set(subs) == {"demo", "fit", "predict", "transform"}
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for name in subs:
        assert name in top
    for name, sub in subs.items():
        assert main([name, "--help"]) == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: sela {name}")
        for action in sub._actions:
            # Every option and argument is documented.
            assert action.help, (name, action.dest)
            for opt in action.option_strings:
                assert opt in text, (name, opt)


def test_version(capsys):
    assert main(["--version"]) == 0
    from sklearn_sela import __version__

    assert __version__ in capsys.readouterr().out


def test_entry_points_run_as_subprocesses():
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="80")
    res = subprocess.run([sys.executable, "-m", "sklearn_sela", "demo", "--help"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "usage: sela demo" in res.stdout and "--quick" in res.stdout
    exe = shutil.which("sela")
    if exe is None:
        pytest.skip("the sela console script is not on PATH (package not pip-installed)")
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "usage: sela" in res.stdout and "transform" in res.stdout


# -- demo ------------------------------------------------------------------------------------


def test_demo_quick(tmp_path, capsys):
    status, out, err = _run(capsys, "demo", "--quick", "--out", str(tmp_path))
    assert status == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[header].split()[1:4] == ["ACC", "NMI", "ARI"]
    assert lines[header + 1].startswith("KMeans") and lines[header + 2].startswith("SeLa")
    for line in lines[header + 1: header + 3]:
        values = [float(v) for v in line.split()[-4:-1]]
        assert all(-1.0 <= v <= 1.0 for v in values)
    for png in ("digits_montage.png", "digits_label_nmi.png"):
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG"


def test_commands_without_matplotlib_skip_only_the_figures(folder, tmp_path, capsys,
                                                           monkeypatch):
    # matplotlib is optional: `pip install sklearn-sela && sela demo` must work.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, out, err = _run(capsys, "demo", "--quick", "--out", str(tmp_path / "demo"))
    assert status == 0, err
    assert "figures skipped: matplotlib is not installed" in out
    assert any(line.startswith("SeLa") for line in out.splitlines())
    assert not (tmp_path / "demo").exists()  # nothing to write

    status, out, err = _run(capsys, "fit", str(folder), "--n-clusters", "3", "--max-epochs", "2",
                            "--batch-size", "16", "--out", str(tmp_path / "fit"))
    assert status == 0, err
    assert out.count("figures skipped: matplotlib is not installed") == 1
    names = set(os.listdir(tmp_path / "fit"))
    assert {"labels.csv", "model.pt", "summary.json"} <= names
    assert not any(n.endswith(".png") for n in names)
    outputs = json.loads((tmp_path / "fit" / "summary.json").read_text())["outputs"]
    assert not any(name.startswith(("montage", "label_nmi")) for name in outputs)


def test_plot_helpers_without_matplotlib_say_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="plot_cluster_montage needs matplotlib"):
        plot_cluster_montage(np.zeros((2, 8, 8)), [0, 1])
    history = [{"epoch": 1, "label_update": {"nmi_prev": [0.5]}}]
    with pytest.raises(ImportError, match="plot_label_nmi needs matplotlib"):
        plot_label_nmi(history)


# -- persistence -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_small():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X[:150] / 16.0, y[:150]


@pytest.fixture(scope="module")
def saved(digits_small, tmp_path_factory):
    """A small fitted estimator with two heads of K=4 and one of K=6, and its
    model file."""
    X, _ = digits_small
    est = SelfLabelClusterer(n_clusters=[4, 4, 6], max_epochs=2, batch_size=32,
                             random_state=0).fit(X)
    path = save_model(est, tmp_path_factory.mktemp("model") / "m.pt")
    return est, path


def test_save_load_roundtrip(digits_small, saved):
    X, _ = digits_small
    est, path = saved
    loaded = load_model(path)
    assert model_params(loaded) == model_params(est)
    assert loaded.get_params()["random_state"] == est.net_.label_seed
    np.testing.assert_array_equal(loaded.labels_all_, est.labels_all_)
    np.testing.assert_array_equal(loaded.labels_, est.labels_)
    assert loaded.n_clusters_ == est.n_clusters_ == [4, 4, 6]
    assert loaded.n_epochs_ == est.n_epochs_
    assert loaded.input_info_ == est.input_info_ and loaded.n_features_in_ == 64
    # head_ is chosen among the heads with the first head's K, and kept.
    assert est.head_ in (0, 1) and loaded.head_ == est.head_
    # labels_ is predict() of the training data, on the loaded model too.
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    np.testing.assert_array_equal(loaded.predict(X), loaded.labels_)
    np.testing.assert_allclose(loaded.predict_proba(X), est.predict_proba(X),
                               rtol=1e-5, atol=1e-6)
    for t, (a, b) in enumerate(zip(loaded.predict_proba_heads(X), est.predict_proba_heads(X))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(loaded.predict(X, head=t), est.predict(X, head=t))
        np.testing.assert_allclose(loaded.log_betas_[t], est.log_betas_[t])
    np.testing.assert_allclose(loaded.transform(X), est.transform(X), rtol=1e-5, atol=1e-6)
    assert loaded.score(X) == pytest.approx(est.score(X), rel=1e-5)
    assert len(loaded.history_) == len(est.history_)
    assert loaded.history_[0]["label_update"]["sinkhorn_iter"] == \
        est.history_[0]["label_update"]["sinkhorn_iter"]
    for gone in ("labels_from_", "feature_assigner_", "whitening_matrix_"):
        assert not hasattr(loaded, gone)


def test_model_file_layout(saved):
    # The layout of the persistence module's docstring, in plain values only:
    # it loads with weights_only=True.
    est, path = saved
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"format", "format_version", "library_version", "estimator",
                        "params", "state_dict", "fitted"}
    assert raw["format"] == "sklearn-sela-model" and raw["format_version"] == 1
    assert raw["estimator"] == "SelfLabelClusterer"
    assert json.loads(raw["params"]) == model_params(est)
    assert set(json.loads(raw["params"])) == set(SelfLabelClusterer().get_params())
    fitted = raw["fitted"]
    assert set(fitted) == {"input_info", "n_clusters_", "head_", "n_epochs_", "labels_",
                           "labels_all_", "log_betas_", "cluster_proportions_", "proportions",
                           "history", "max_epochs", "seed", "label_updates"}
    assert fitted["n_clusters_"] == [4, 4, 6] and fitted["head_"] == est.head_
    assert fitted["input_info"] == {"kind": "tabular", "sample_shape": [64],
                                    "n_samples": 150}
    assert fitted["labels_"].tolist() == est.labels_.tolist()
    assert tuple(fitted["labels_all_"].shape) == (150, 3)


def test_model_params(saved):
    est, _ = saved
    params = model_params(est)
    assert set(params) == set(est.get_params(deep=False))
    json.dumps(params)  # plain values
    assert params["n_clusters"] == [4, 4, 6] and params["batch_size"] == 32
    assert params["random_state"] == est.net_.label_seed
    assert params["callbacks"] is None and params["checkpoint_dir"] is None


@pytest.mark.parametrize("change, message", [
    ("unknown", "unknown parameter(s) labels_from"),
    ("missing", "missing parameter(s) label_neighbors"),
    ("both", "unknown parameter(s) whiten; missing parameter(s) label_neighbors"),
])
def test_load_refuses_other_parameters(saved, tmp_path, change, message):
    # A file written by another version (a parameter it has that this one
    # lacks, or the reverse) is refused, naming the parameters.
    _, path = saved
    state = torch.load(path, weights_only=True)
    params = json.loads(state["params"])
    if change in ("unknown", "both"):
        params["labels_from" if change == "unknown" else "whiten"] = "features"
    if change in ("missing", "both"):
        del params["label_neighbors"]
    state["params"] = json.dumps(params)
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match=re.escape(message)):
        load_model(tmp_path / "other.pt")


@pytest.mark.parametrize("version", [0, 2, 10, 99, None])
def test_load_refuses_other_format_versions(saved, tmp_path, version):
    # Only format 1 is read: nothing older was released.
    _, path = saved
    state = torch.load(path, weights_only=True)
    state["format_version"] = version
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match=re.escape(f"has model format {version!r}")):
        load_model(tmp_path / "other.pt")


def test_save_rejects_unsaveable_params(digits_small, tmp_path):
    X, _ = digits_small
    backbone = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU())
    est = SelfLabelClusterer(n_clusters=3, backbone=backbone, max_epochs=1,
                             random_state=0).fit(X)
    with pytest.raises(ValueError, match="backbone"):
        save_model(est, tmp_path / "m.pt")
    assert not os.path.exists(tmp_path / "m.pt")
    with pytest.raises(NotFittedError):
        save_model(SelfLabelClusterer(n_clusters=3), tmp_path / "m.pt")
    assert not os.path.exists(tmp_path / "m.pt")


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ModelFileError, match="directory"):
        load_model(tmp_path)
    torch.save({"format": "sklearn-sela-model", "format_version": 99}, tmp_path / "new.pt")
    with pytest.raises(ModelFileError, match="model format 99.*reads format 1"):
        load_model(tmp_path / "new.pt")
    torch.save({"format": "something-else", "format_version": 1}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not a sklearn-sela model file"):
        load_model(tmp_path / "other.pt")
    torch.save({"format": "sklearn-sela-model", "format_version": 1, "params": "{"},
               tmp_path / "damaged.pt")
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(tmp_path / "damaged.pt")


# -- plotting --------------------------------------------------------------------------------


class _CountingImages:
    """An image sequence that records which items are read."""

    def __init__(self, n):
        self.n = n
        self.read = set()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.read.add(i)
        return np.full((3, 6, 6), i / self.n, dtype=np.float32)  # channels first


def test_cluster_montage_layout_and_laziness():
    images = _CountingImages(100)
    labels = np.repeat(np.arange(10), 10)
    canvas, clusters, sizes = cluster_montage(images, labels, n_per_cluster=3,
                                              max_clusters=4, padding=1)
    assert clusters.tolist() == sorted(clusters.tolist()) and len(clusters) == 4
    assert sizes.tolist() == [10] * 4
    assert canvas.shape == (4 * 7 - 1, 3 * 7 - 1, 3)  # colour, channels last
    assert len(images.read) == 12  # only the shown images are read
    assert {labels[i] for i in images.read} == set(clusters.tolist())


def test_cluster_montage_values_and_blank_cells():
    # Floats outside [0, 1] are rescaled; a cluster of one leaves white cells.
    images = np.stack([np.full((4, 4), v, dtype=np.float64) for v in (0.0, 8.0, 16.0)])
    canvas, clusters, sizes = cluster_montage(images, [0, 0, 1], n_per_cluster=2, padding=0)
    assert canvas.shape == (8, 8) and canvas.dtype == np.float32
    assert canvas.min() == 0.0 and canvas.max() == 1.0
    assert np.all(canvas[4:, 4:] == 1.0)  # blank cell of cluster 1
    assert sizes.tolist() == [2, 1]
    # uint8 RGB images larger than the thumbnail are shrunk.
    big = np.zeros((2, 100, 80, 3), dtype=np.uint8)
    canvas, _, _ = cluster_montage(big, [0, 1], thumb_size=50, padding=0)
    assert canvas.shape == (100, 40, 3)
    with pytest.raises(ValueError, match="entries"):
        cluster_montage(big, [0, 1, 2])


def test_plot_helpers_save_pngs(digits_small, tmp_path):
    pytest.importorskip("matplotlib")
    from sklearn.datasets import load_digits

    images = load_digits().images[:150]
    labels = np.arange(150) % 7
    fig = plot_cluster_montage(images, labels, path=tmp_path / "m.png", title="t")
    assert os.path.exists(tmp_path / "m.png") and fig.axes[0].get_title() == "t"
    fig = plot_cluster_montage(images, labels, max_clusters=3)
    assert "3 of 7 clusters" in fig.axes[0].get_title()
    history = [
        {"epoch": 1, "label_update": {"nmi_prev": [0.01, 0.02]}, "nmi_true": [0.1, 0.2]},
        {"epoch": 2},
        {"epoch": 3, "label_update": {"nmi_prev": [0.5, 0.6]}, "nmi_true": [0.3, 0.4]},
    ]
    fig = plot_label_nmi(history, path=tmp_path / "n.png")
    assert os.path.exists(tmp_path / "n.png")
    # Several heads: one line (their median) against the previous labels and
    # one against the truth, each with a band over the heads.
    assert len(fig.axes[0].lines) == 2
    with pytest.raises(ValueError, match="no label update"):
        plot_label_nmi([{"epoch": 1}])
