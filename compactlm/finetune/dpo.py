"""Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290).

DPO needs only two numbers per sequence: the summed log-probability of its completion tokens under
the policy and under a frozen reference. `sequence_logps` computes them for a compactlm Transformer,
`dpo_loss` turns four such vectors into the sigmoid loss and the statistics worth logging.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sequence_logps(model, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability [B] of the masked target tokens of each row of tokens [B, T + 1].

    The mask is over tokens, not predictions, so the collator can mark a completion where it lies in
    the row; loss_mask[:, 0] is ignored because nothing predicts the first token. A sum, not a mean:
    DPO's implicit reward is the log-ratio of whole sequences, and a per-token mean would make it
    depend on length in a way the derivation does not. Right padding needs no attention mask, since
    causal attention keeps it out of every earlier position; masked-out targets add exactly zero.
    """
    if tokens.dim() != 2 or tokens.shape != loss_mask.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and loss_mask {tuple(loss_mask.shape)} must both be [B, T + 1]")
    if tokens.shape[1] < 2:
        raise ValueError("tokens need at least two positions: one input and one target")
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs)
    # float32 whatever the model's dtype: bf16 log-probs summed over a completion lose the small
    # policy/reference differences that DPO is made of.
    logps = logits.float().log_softmax(dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # masked_fill, not a product: a masked target can never turn the sum into NaN.
    return logps.masked_fill(~loss_mask[:, 1:].bool(), 0.0).sum(dim=-1)


@dataclass
class DPOStats:
    """The loss to step on, and per-pair diagnostics (detached) in TRL's naming: `margins` rising and
    `accuracies` tending to 1 show the policy learning the preference; `chosen_rewards` falling too
    shows it doing so by pushing both completions down."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    margins: torch.Tensor
    accuracies: torch.Tensor


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> DPOStats:
    """Sigmoid DPO loss, mean over pairs, from summed sequence log-probs [B] (see `sequence_logps`).

    beta scales the implicit reward beta * log(pi / pi_ref): a small beta lets the policy drift further
    from the reference. logsigmoid rather than log(sigmoid(x)), which underflows to -inf once a pair
    is confidently wrong, just where the gradient matters most.
    """
    # The reference is a constant of the objective: never let a gradient reach it.
    chosen_logratios = policy_chosen.float() - reference_chosen.detach().float()
    rejected_logratios = policy_rejected.float() - reference_rejected.detach().float()
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return DPOStats(loss=loss, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
                    margins=chosen_rewards - rejected_rewards,
                    accuracies=(chosen_rewards > rejected_rewards).float())
