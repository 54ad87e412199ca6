"""Learning without forgetting (LwF): distil the earlier heads' outputs on the new inputs.

Li & Hoiem 2016, "Learning without forgetting". Naive's shared trunk and per-task heads
(``baselines/naive.py``), with no stored data and no importances: before training on a new
task, the net's outputs at every earlier head are recorded for the new task's training
inputs; training then minimises

    cross_entropy(new head, labels)
    + distill_weight * sum_{earlier heads k} KL( softmax(recorded_k / T) || softmax(current_k / T) )

so the trunk (and every head, which all keep training, as in the paper) may change only in
ways that keep the earlier heads' answers on the new inputs. In the domain-incremental
scenario there is one shared head: the sum has one term, that head's answers before the
task. KL is the paper's soft cross-entropy minus the targets' entropy, a constant: the
gradients are the same and the loss is zero when the net still gives the recorded outputs.
The paper's warm-up (training the new head alone first) is left out; the optimiser is the
shared recipe's.

Storage (tensor payload, bytes; P_trunk = 21,330 trunk parameters for MNIST, 61,156 for
CIFAR; H = 102 or 170 head parameters; T = tasks learnt; float32):
    4 * (P_trunk + T*H)  [the net, exactly naive's state]
The recorded outputs exist only while a task is being learnt.

Defaults: the paper's temperature T = 2 (not tuned) and the loss weight lambda_o
(``distill_weight``) chosen on validation data together with the shared recipe's lr
(``clbench select``: ``leaderboard/tuning/shared_lr.json``, from the records
``leaderboard/tuning/onevsrest/lwf.json`` and ``split/lwf.json``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from baselines.regularizers import SharedTrunkAgent
from clbench.nets import MultiHeadNet
from clbench.recipe import train
from clbench.tasks import Task
from clbench.training import fast_layout, normalized

# Hyperparameters (training: the shared recipe, clbench.recipe.DEFAULT, overridable by name)
DISTILL_WEIGHT = 2.0  # lambda_o of Li & Hoiem: leaderboard/tuning/shared_lr.json
TEMPERATURE = 2.0  # softens both distributions, as in the paper
RECORD_BATCH = 1024  # inputs per forward pass when recording the earlier heads' outputs


def distillation_loss(logits: torch.Tensor, recorded: torch.Tensor, temperature: float
                      ) -> torch.Tensor:
    """KL(softmax(recorded / T) || softmax(logits / T)), summed over heads, mean over examples.

    ``logits`` and ``recorded`` have shape (examples, earlier heads, classes).
    """
    current = F.log_softmax(logits / temperature, dim=-1)
    target = F.log_softmax(recorded / temperature, dim=-1)
    return F.kl_div(current, target, log_target=True, reduction="sum") / len(logits)


def earlier_head_logits(net: MultiHeadNet, features: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Outputs of heads ``0 .. n_heads-1`` on trunk ``features``: (examples, heads, classes)."""
    return torch.stack([net.heads[k](features) for k in range(n_heads)], dim=1)


class LwF(SharedTrunkAgent):
    """Naive fine-tuning plus distillation of the earlier heads' outputs on the new inputs."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        distill_weight: float = DISTILL_WEIGHT,
        temperature: float = TEMPERATURE,
        **recipe: Any,
    ) -> None:
        super().__init__(device, **recipe)  # the shared recipe's overrides
        if distill_weight < 0:
            raise ValueError(f"distill_weight={distill_weight}: the loss weight must be >= 0")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: the temperature must be > 0")
        self.distill_weight, self.temperature = distill_weight, temperature

    @torch.no_grad()
    def _record(self, task: Task, n_heads: int) -> torch.Tensor:
        """Heads ``0 .. n_heads-1``'s outputs on every training input of ``task``."""
        self.net.eval()
        images = normalized(task.x_train, task.dataset)
        return torch.cat([
            earlier_head_logits(
                self.net, self.net.trunk(fast_layout(images[start : start + RECORD_BATCH])),
                n_heads)
            for start in range(0, len(images), RECORD_BATCH)
        ])

    def learn(self, task: Task) -> None:
        n_earlier = len(self.datasets)
        net = self._start_task(task)
        if net.shared_head:  # domain scenario: the earlier heads are the one shared head
            n_earlier = min(n_earlier, 1)
        recorded = self._record(task, n_earlier) if n_earlier else None  # before any step

        # The recipe's loop runs over example indices, so that each minibatch finds its
        # recorded outputs; the images are normalised once per task, as the recipe does.
        images = normalized(task.x_train, task.dataset)

        def inputs(batch: torch.Tensor) -> torch.Tensor:
            return fast_layout(images.index_select(0, batch))

        def loss(batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            features = net.trunk(inputs(batch))
            total = F.cross_entropy(net.heads[task.id](features), labels)
            if recorded is None:
                return total
            current = earlier_head_logits(net, features, n_earlier)
            return total + self.distill_weight * distillation_loss(
                current, recorded[batch], self.temperature)

        net.train()
        index = torch.arange(len(task.y_train), device=task.y_train.device)
        self.last_training = train(lambda batch: net(inputs(batch), task.id), net.parameters(),
                                   index, task.y_train, self.recipe, loss=loss)
