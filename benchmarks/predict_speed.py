"""Prediction speed of the reference nets: their 2x2 max-pools as ``clbench.nets.MaxPool2x2``
(the maximum of the four strided corners when no gradient is recorded) against the plain
``nn.MaxPool2d(2)`` kernel, on the same weights and images.

Each variant labels ``--images`` random images through ``clbench.training.predict_batched``
(what every evaluation step and TN+EN's held-out checks run), the two taking turns, round
after round; the table gives the fastest and the median round of each and their ratio, and
checks that both gave the same labels. One thread by default (--threads).

    python benchmarks/predict_speed.py --rounds 40
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved, markdown, median
from torch import nn

from clbench.nets import MNIST_SHAPE, MaxPool2x2, reference_net
from clbench.training import predict_batched


def with_plain_pools(net: nn.Sequential) -> nn.Sequential:
    """The same layers (shared weights), each MaxPool2x2 replaced by ``nn.MaxPool2d(2)``."""
    return nn.Sequential(*[nn.MaxPool2d(2) if isinstance(layer, MaxPool2x2) else layer
                           for layer in net]).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="images per prediction")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fast = reference_net(MNIST_SHAPE).eval()
    plain = with_plain_pools(fast)
    images = torch.randint(0, 256, (args.images, *MNIST_SHAPE), dtype=torch.uint8)
    same = torch.equal(predict_batched(fast, images, "mnist5k"),
                       predict_batched(plain, images, "mnist5k"))
    seconds = interleaved({"nn.MaxPool2d(2)": lambda: predict_batched(plain, images, "mnist5k"),
                           "MaxPool2x2": lambda: predict_batched(fast, images, "mnist5k")},
                          args.rounds)
    rows = [[name, f"{min(values) * 1e3:.2f}", f"{median(values) * 1e3:.2f}"]
            for name, values in seconds.items()]
    ratio = median(seconds["nn.MaxPool2d(2)"]) / median(seconds["MaxPool2x2"])
    print(f"MNIST reference net, {args.images} images, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds; same labels: {same}\n")
    print(markdown(["pools", "fastest ms", "median ms"], rows))
    print(f"\nspeed-up of the median: {ratio:.2f}x")


if __name__ == "__main__":
    main()
