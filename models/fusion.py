"""Shared building blocks of the fusion head: BERT-style self/cross-attention layers
(transformers' own BertAttention/Intermediate/Output, so parameter names match the
published checkpoints) and the masking helpers every variant uses."""
import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOutput


def fusion_heads(hidden_size: int) -> int:
    """12 heads as in BERT-base when the size allows it, else the largest count <= 12 that divides it."""
    return max(h for h in range(1, 13) if hidden_size % h == 0)


def bert_layer_config(hidden_size: int, dropout: float = 0.1, attn_implementation: str = "sdpa") -> BertConfig:
    """BERT-base layer settings (post-LN, GELU, 4x intermediate, eps 1e-12) at any width."""
    config = BertConfig(
        hidden_size=hidden_size,
        num_attention_heads=fusion_heads(hidden_size),
        intermediate_size=4 * hidden_size,
        hidden_act="gelu",
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        layer_norm_eps=1e-12,
    )
    config._attn_implementation = attn_implementation
    return config


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] valid counts -> [B, max_len] bool, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def additive_key_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T_key] bool -> [B, 1, 1, T_key] additive mask: 0 on valid keys, -inf-like on padding."""
    mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    mask = mask.masked_fill(~valid, torch.finfo(dtype).min)
    return mask[:, None, None, :]


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of [B, T, D] over the valid positions of each row -> [B, D]."""
    weights = valid.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class AttentionLayer(nn.Module):
    """One BERT layer whose queries come from `queries` and keys/values from `context`
    (self-attention when context is the queries), with a residual on the queries."""

    def __init__(self, config: BertConfig, cross: bool):
        super().__init__()
        self.cross = cross
        self.attention = BertAttention(config, is_cross_attention=cross)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, queries, context, context_valid):
        key_mask = additive_key_mask(context_valid, queries.dtype)
        if self.cross:
            attended, _ = self.attention(queries, encoder_hidden_states=context, encoder_attention_mask=key_mask)
        else:
            attended, _ = self.attention(queries, attention_mask=key_mask)
        return self.output(self.intermediate(attended), attended)


class AttentionBlock(nn.Module):
    """A one-layer stack, named like upstream's (`<block>.layer.0.attention.self.query...`)."""

    def __init__(self, config: BertConfig, cross: bool):
        super().__init__()
        self.layer = nn.ModuleList([AttentionLayer(config, cross)])

    def forward(self, queries, context, context_valid):
        for layer in self.layer:
            queries = layer(queries, context, context_valid)
        return queries
