# Written by shears (https://github.com/shears-rs) next to the weights of a structurally
# pruned GPT-2. Load it with
#     AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
# (or AutoModel for the decoder alone).
#
# The model is GPT-2 (pre-norm decoder, causal attention, learned absolute positions, the
# language-model head tied to the token embedding) in which each layer keeps its own number
# of attention heads (`layer_num_heads`, each of `attention_head_size`, so the attention
# scale is that of the original model) and its own number of feed-forward neurons
# (`layer_intermediate_sizes`), over a hidden size that may be smaller than the original's.
# A layer with no heads (no neurons) adds only the output projection's bias, which is what
# the full block computes with every head (neuron) removed. Parameter names and layouts are
# GPT-2's (`c_attn` holds query, key and value side by side, `[in, out]` weights), so the
# weights file is an ordinary GPT-2 one with some tensors of other shapes.
#
# There is no key/value cache: `generate` recomputes the prefix at each step, which gives
# the same tokens as a cached decoder, only slower.
import math

import torch
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
)
from transformers.pytorch_utils import Conv1D


class ShearsGpt2Config(PretrainedConfig):
    model_type = "shears_gpt2"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=50257,
        hidden_size=768,
        layer_num_heads=(12,) * 12,
        attention_head_size=64,
        layer_intermediate_sizes=(3072,) * 12,
        hidden_act="gelu_new",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        embedding_dropout_prob=0.1,
        max_position_embeddings=1024,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        bos_token_id=50256,
        eos_token_id=50256,
        **kwargs,
    ):
        kwargs.setdefault("tie_word_embeddings", True)
        kwargs.setdefault("use_cache", False)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
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
        self.embedding_dropout_prob = embedding_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps


def project(conv, x):
    """`x W + b` of a `Conv1D` (`[in, out]` weight), also when `in` is 0 (an empty context
    or hidden layer: the bias alone), where `Conv1D.forward` cannot reshape its input."""
    return x @ conv.weight + conv.bias


class ShearsGpt2Attention(nn.Module):
    def __init__(self, config, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.head_size = config.attention_head_size
        width = n_heads * self.head_size
        self.c_attn = Conv1D(3 * width, config.hidden_size)
        self.c_proj = Conv1D(config.hidden_size, width)
        self.attn_dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.resid_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, mask_bias):
        b, s, _ = x.shape
        h, dh = self.n_heads, self.head_size
        if h == 0:
            # c_proj of an empty context: its bias alone.
            return self.resid_dropout(project(self.c_proj, x.new_zeros(b, s, 0)))
        q, k, v = project(self.c_attn, x).split(h * dh, dim=2)

        def heads(t):
            return t.view(b, s, h, dh).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh) + mask_bias
        probs = self.attn_dropout(scores.softmax(dim=-1))
        context = (probs @ v).transpose(1, 2).reshape(b, s, h * dh)
        return self.resid_dropout(project(self.c_proj, context))


class ShearsGpt2Mlp(nn.Module):
    def __init__(self, config, width):
        super().__init__()
        self.c_fc = Conv1D(width, config.hidden_size)
        self.c_proj = Conv1D(config.hidden_size, width)
        self.act = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x):
        # With width 0 the product is all zeros: the block adds its bias alone.
        return self.dropout(project(self.c_proj, self.act(project(self.c_fc, x))))


class ShearsGpt2Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        self.attn = ShearsGpt2Attention(config, config.layer_num_heads[layer])
        self.ln_2 = nn.LayerNorm(d, eps=eps)
        self.mlp = ShearsGpt2Mlp(config, config.layer_intermediate_sizes[layer])

    def forward(self, x, mask_bias):
        x = x + self.attn(self.ln_1(x), mask_bias)
        return x + self.mlp(self.ln_2(x))


class ShearsGpt2PreTrainedModel(PreTrainedModel):
    config_class = ShearsGpt2Config
    base_model_prefix = "transformer"

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, Conv1D)):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


class ShearsGpt2Model(ShearsGpt2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        d = config.hidden_size
        self.wte = nn.Embedding(config.vocab_size, d)
        self.wpe = nn.Embedding(config.max_position_embeddings, d)
        self.drop = nn.Dropout(config.embedding_dropout_prob)
        self.h = nn.ModuleList(
            ShearsGpt2Block(config, i) for i in range(config.num_hidden_layers)
        )
        self.ln_f = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        b, s = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(s, device=input_ids.device).unsqueeze(0)
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        dtype = x.dtype
        low = torch.finfo(dtype).min
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        mask_bias = torch.zeros(b, 1, s, s, dtype=dtype, device=x.device)
        mask_bias = mask_bias.masked_fill(~causal, low)
        if attention_mask is not None:
            pad = attention_mask[:, None, None, :] == 0
            mask_bias = mask_bias.masked_fill(pad, low)
        states = [x] if output_hidden_states else None
        for block in self.h:
            x = block(x, mask_bias)
            if states is not None:
                states.append(x)
        x = self.ln_f(x)
        if states is not None:
            states[-1] = x
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            hidden_states=tuple(states) if states is not None else None,
        )


class ShearsGpt2LMHeadModel(ShearsGpt2PreTrainedModel, GenerationMixin):
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.transformer = ShearsGpt2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # No cache: every step runs the whole sequence so far.
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        labels=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        out = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
        )
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            shift = logits[:, :-1].reshape(-1, logits.shape[-1])
            loss = nn.functional.cross_entropy(shift, labels[:, 1:].reshape(-1))
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states
        )
