# Written by shears (https://github.com/shears-rs) next to the weights of a structurally
# pruned BERT. Load it with
#     AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)
# (or AutoModel for the encoder alone).
#
# The model is BERT (post-norm encoder, learned absolute positions, token types; RoBERTa
# is the same with positions counted from `position_offset` = its pad_token_id + 1, as
# transformers counts them for the tokens of a right-padded row) in which
# each layer keeps its own number of attention heads (`layer_num_heads`, each of
# `attention_head_size`, so the attention scale is that of the original model) and its own
# number of feed-forward neurons (`layer_intermediate_sizes`), over a hidden size that may
# be smaller than the original's. A layer with no heads (no neurons) adds only the output
# projection's bias, which is what the full block computes with every head (neuron)
# removed. Parameter names are BERT's, so the weights file is an ordinary BERT one with
# some tensors of other shapes.
import math

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    SequenceClassifierOutput,
)


class ShearsBertConfig(PretrainedConfig):
    model_type = "shears_bert"

    def __init__(
        self,
        vocab_size=30522,
        hidden_size=768,
        layer_num_heads=(12,) * 12,
        attention_head_size=64,
        layer_intermediate_sizes=(3072,) * 12,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pooler_size=None,
        classifier_dropout=None,
        pad_token_id=0,
        position_offset=0,
        **kwargs,
    ):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        layer_num_heads = [int(h) for h in layer_num_heads]
        layer_intermediate_sizes = [int(n) for n in layer_intermediate_sizes]
        if len(layer_num_heads) != len(layer_intermediate_sizes):
            raise ValueError(
                f"layer_num_heads has {len(layer_num_heads)} layers but "
                f"layer_intermediate_sizes has {len(layer_intermediate_sizes)}"
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.layer_num_heads = layer_num_heads
        self.attention_head_size = attention_head_size
        self.layer_intermediate_sizes = layer_intermediate_sizes
        self.num_hidden_layers = len(layer_num_heads)
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.pooler_size = pooler_size
        self.classifier_dropout = classifier_dropout
        self.position_offset = int(position_offset)


class ShearsBertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, d)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d)
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_offset = config.position_offset

    def forward(self, input_ids, token_type_ids):
        seq = input_ids.shape[1]
        start = self.position_offset
        positions = torch.arange(start, start + seq, device=input_ids.device).unsqueeze(0)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(x))


class ShearsBertSelfAttention(nn.Module):
    def __init__(self, config, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.head_size = config.attention_head_size
        width = n_heads * self.head_size
        self.query = nn.Linear(config.hidden_size, width)
        self.key = nn.Linear(config.hidden_size, width)
        self.value = nn.Linear(config.hidden_size, width)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, x, mask_bias):
        b, s, _ = x.shape
        h, dh = self.n_heads, self.head_size
        if h == 0:
            return x.new_zeros(b, s, 0)

        def heads(t):
            return t.view(b, s, h, dh).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh) + mask_bias
        probs = self.dropout(scores.softmax(dim=-1))
        return (probs @ v).transpose(1, 2).reshape(b, s, h * dh)


class ShearsBertBlockOutput(nn.Module):
    """A block's output projection, dropout, residual and LayerNorm."""

    def __init__(self, config, width):
        super().__init__()
        self.dense = nn.Linear(width, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h, residual):
        # With width 0 the product is all zeros: the block adds its bias alone.
        return self.LayerNorm(residual + self.dropout(self.dense(h)))


class ShearsBertAttention(nn.Module):
    def __init__(self, config, n_heads):
        super().__init__()
        self.self = ShearsBertSelfAttention(config, n_heads)
        self.output = ShearsBertBlockOutput(config, n_heads * config.attention_head_size)

    def forward(self, x, mask_bias):
        return self.output(self.self(x, mask_bias), x)


class ShearsBertIntermediate(nn.Module):
    def __init__(self, config, width):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, width)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class ShearsBertLayer(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        width = config.layer_intermediate_sizes[layer]
        self.attention = ShearsBertAttention(config, config.layer_num_heads[layer])
        self.intermediate = ShearsBertIntermediate(config, width)
        self.output = ShearsBertBlockOutput(config, width)

    def forward(self, x, mask_bias):
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class ShearsBertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(
            ShearsBertLayer(config, i) for i in range(config.num_hidden_layers)
        )

    def forward(self, x, mask_bias, output_hidden_states):
        states = [x] if output_hidden_states else None
        for layer in self.layer:
            x = layer(x, mask_bias)
            if states is not None:
                states.append(x)
        return x, states


class ShearsBertPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.pooler_size)
        self.activation = nn.Tanh()

    def forward(self, x):
        return self.activation(self.dense(x[:, 0]))


class ShearsBertPreTrainedModel(PreTrainedModel):
    config_class = ShearsBertConfig
    base_model_prefix = "bert"

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


class ShearsBertModel(ShearsBertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embeddings = ShearsBertEmbeddings(config)
        self.encoder = ShearsBertEncoder(config)
        self.pooler = ShearsBertPooler(config) if config.pooler_size else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        dtype = self.embeddings.word_embeddings.weight.dtype
        keep = attention_mask[:, None, None, :].to(dtype)
        mask_bias = (1.0 - keep) * torch.finfo(dtype).min
        x = self.embeddings(input_ids, token_type_ids)
        x, states = self.encoder(x, mask_bias, bool(output_hidden_states))
        pooled = self.pooler(x) if self.pooler is not None else None
        return BaseModelOutputWithPooling(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(states) if states is not None else None,
        )


class ShearsBertForSequenceClassification(ShearsBertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        if not config.pooler_size:
            raise ValueError("a sequence classifier needs a pooler (pooler_size)")
        self.num_labels = config.num_labels
        self.bert = ShearsBertModel(config)
        p = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if p is None else p)
        self.classifier = nn.Linear(config.pooler_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        out = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(self.dropout(out.pooler_output))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states
        )
