"""The shared training primitives: same semantics as the plain loop, faster, deterministic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from baselines.naive import Naive
from clbench import training
from clbench.data import normalize
from clbench.nets import MaxPool2x2, reference_net
from clbench.tasks import Task, TaskSpec
from clbench.training import fast_layout, minibatches, normalized, predict_batched, sgd


def random_task(n: int = 150, task_id: int = 0, seed: int = 0) -> Task:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    return Task(task_id, TaskSpec("mnist5k", (2 * task_id,), (2 * task_id + 1,)), images, labels)


def test_minibatches_cover_the_epoch_with_normalised_inputs() -> None:
    task = random_task(n=150)
    seen = []
    batches = list(minibatches(task.x_train, torch.arange(150), task.dataset, 64,
                               torch.Generator().manual_seed(3)))
    assert [len(index) for _, index in batches] == [64, 64, 22]
    for inputs, index in batches:
        assert torch.equal(inputs, normalize(task.x_train[index], task.dataset))
        assert inputs.is_contiguous(memory_format=torch.channels_last)
        seen.append(index)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(150))
    again = list(minibatches(task.x_train, torch.arange(150), task.dataset, 64,
                             torch.Generator().manual_seed(3)))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True))


def test_normalized_cache_follows_identity_version_and_dataset() -> None:
    images = random_task().x_train
    first = normalized(images, "mnist5k")
    assert normalized(images, "mnist5k") is first
    assert torch.equal(first, normalize(images, "mnist5k"))
    assert torch.equal(normalized(images, "fashion_mnist"), normalize(images, "fashion_mnist"))
    images[0] = 255 - images[0]
    assert torch.equal(normalized(images, "mnist5k"), normalize(images, "mnist5k"))
    others = [random_task(seed=s).x_train for s in range(1, 4)]
    for other in others:
        normalized(other, "mnist5k")
    assert normalized(images, "mnist5k") is not first  # evicted, recomputed


def test_normalized_copy_is_freed_with_its_images() -> None:
    images = random_task(seed=9).x_train
    normalized(images, "mnist5k")
    assert id(images) in training._normalized_cache
    key = id(images)
    del images
    assert key not in training._normalized_cache


def test_normalize_leaves_float_inputs_unchanged() -> None:
    images = torch.full((2, 1, 4, 4), 255.0)
    normalize(images, "mnist5k")
    assert torch.equal(images, torch.full((2, 1, 4, 4), 255.0))


def test_fast_layout_is_a_view_of_the_same_values() -> None:
    batch = torch.randn(5, 1, 28, 28)
    marked = fast_layout(batch)
    assert torch.equal(marked, batch) and marked.data_ptr() == batch.data_ptr()
    assert marked.is_contiguous(memory_format=torch.channels_last)
    assert marked.view(5, -1).shape == (5, 784)
    colour = torch.randn(5, 3, 32, 32)
    assert fast_layout(colour) is colour


@pytest.mark.parametrize("shape", [(7, 10, 24, 24), (3, 6, 25, 27), (2, 1, 2, 3), (4, 16, 8, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool_2x2_inference_path_gives_the_pooling_kernels_values(shape, channels_last):
    torch.manual_seed(0)
    x = torch.randint(-2, 3, shape).float()  # many ties, zeros of both signs (== each other)
    x[x == 0] = -0.0
    x.view(-1)[::7] = 0.0
    x[0, 0, 0, 0] = float("nan")
    x[-1, -1, -1, -1] = float("-inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pool = MaxPool2x2()
    with torch.no_grad():
        fast = pool(x)
    expected = F.max_pool2d(x, 2)
    assert fast.shape == expected.shape
    assert torch.equal(fast.nan_to_num(nan=7.0), expected.nan_to_num(nan=7.0))
    assert torch.isnan(fast).sum() == torch.isnan(expected).sum()


def test_reference_nets_predict_the_same_logits_with_either_pool():
    torch.manual_seed(0)
    for shape in ((1, 28, 28), (3, 32, 32)):
        fast = reference_net(shape).eval()
        plain = torch.nn.Sequential(*[torch.nn.MaxPool2d(2) if isinstance(layer, MaxPool2x2)
                                      else layer for layer in fast])
        images = torch.randint(0, 256, (200, *shape), dtype=torch.uint8)
        images[:50] = 0  # blank images: many zero activations
        x = fast_layout(normalize(images, "mnist5k" if shape[0] == 1 else "cifar10"))
        with torch.no_grad():
            assert torch.equal(fast(x), plain(x))


def test_max_pool_2x2_trains_through_the_pooling_kernel():
    x = torch.randn(4, 3, 10, 10, requires_grad=True)
    MaxPool2x2()(x).sum().backward()
    y = x.detach().clone().requires_grad_()
    F.max_pool2d(y, 2).sum().backward()
    assert torch.equal(x.grad, y.grad)
    assert isinstance(reference_net((1, 28, 28))[1], torch.nn.MaxPool2d)  # one of its kind
    with torch.no_grad(), pytest.raises(RuntimeError, match="Output size is too small"):
        MaxPool2x2()(torch.randn(2, 1, 1, 3))  # as small as the kernel refuses: its error


def test_predict_batched_matches_one_big_forward() -> None:
    torch.manual_seed(0)
    net = reference_net((1, 28, 28)).eval()
    images = random_task(n=70).x_train
    with torch.no_grad():
        expected = net(normalize(images, "mnist5k")).argmax(dim=1)
    assert torch.equal(predict_batched(net, images, "mnist5k", batch_size=32), expected)
    assert predict_batched(net, images[:0], "mnist5k").shape == (0,)


def test_sgd_takes_the_same_steps_as_the_plain_optimiser() -> None:
    torch.manual_seed(0)
    net = reference_net((1, 28, 28))
    twin = reference_net((1, 28, 28))
    twin.load_state_dict(net.state_dict())
    fast = sgd(net.parameters(), lr=0.05, momentum=0.5)
    plain = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.5, foreach=False)
    inputs, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 2, (16,))
    for _ in range(3):
        for model, optimizer in ((net, fast), (twin, plain)):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_sgd_steps_a_parameter_whose_first_gradient_comes_late() -> None:
    """A head of a multi-head net gets no gradient until a batch holds its task's examples
    (replay, joint). torch's fused SGD cannot mix parameters with and without a momentum
    buffer (TypeError: expected Tensor ... but got NoneType); :func:`sgd` must take the same
    steps as the plain optimiser, which skips a parameter without a gradient."""
    torch.manual_seed(0)
    heads = [torch.nn.Linear(4, 2) for _ in range(2)]
    twins = [torch.nn.Linear(4, 2) for _ in range(2)]
    for head, twin in zip(heads, twins, strict=True):
        twin.load_state_dict(head.state_dict())
    fast = sgd([p for h in heads for p in h.parameters()], lr=0.05, momentum=0.9)
    plain = torch.optim.SGD([p for h in twins for p in h.parameters()], lr=0.05,
                            momentum=0.9, foreach=False)
    inputs, labels = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for used in ([0], [0, 1], [1], [0, 1]):  # head 1's first gradient comes at step 2
        for model, optimizer in ((heads, fast), (twins, plain)):
            optimizer.zero_grad(set_to_none=True)
            sum(F.cross_entropy(model[i](inputs), labels) for i in used).backward()
            optimizer.step()
    for a, b in zip([p for h in heads for p in h.parameters()],
                    [p for h in twins for p in h.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_fast_path_is_bitwise_deterministic() -> None:
    """Two naive learns from the same seed give identical weights: the sealed harness replays
    every learn and compares states bit for bit."""
    tasks = [random_task(n=130, task_id=i, seed=i) for i in range(2)]

    def run() -> dict:
        torch.manual_seed(0)
        agent = Naive(epochs=1)
        for task in tasks:
            agent.learn(task)
        return agent.state_dict()["net"]

    first, second = run(), run()
    assert all(torch.equal(first[key], second[key]) for key in first)
