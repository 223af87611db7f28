"""modeling_chatglm.py against transformers' GlmForCausalLM through the key mapping in docs/models.md."""

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file

from longalign import IGNORE_INDEX
from longalign.models import load_model
from modeling_chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration

CHATGLM3_TINY = dict(num_layers=2, padded_vocab_size=160, hidden_size=64, ffn_hidden_size=96, kv_channels=16,
                     num_attention_heads=4, multi_query_attention=True, multi_query_group_num=2,
                     add_qkv_bias=True, layernorm_epsilon=1e-5, seq_length=64)
GLM4_TINY = {**CHATGLM3_TINY, "padded_vocab_size": 151552, "hidden_size": 32, "kv_channels": 8,
             "layernorm_epsilon": 1.5625e-07, "rope_ratio": 500, "eos_token_id": [151329, 151336, 151338]}


def glm_reference(c: dict, rope_ratio) -> transformers.GlmForCausalLM:
    """A random GlmForCausalLM with the architecture the chatglm config `c` describes."""
    config = transformers.GlmConfig(
        vocab_size=c["padded_vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["ffn_hidden_size"],
        num_hidden_layers=c["num_layers"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["multi_query_group_num"], head_dim=c["kv_channels"],
        rms_norm_eps=c["layernorm_epsilon"], attention_bias=True, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * rope_ratio, "partial_rotary_factor": 0.5})
    torch.manual_seed(0)
    model = transformers.GlmForCausalLM(config).eval()
    for p in model.parameters():  # random norms and biases too, so a mapping slip cannot hide
        torch.nn.init.normal_(p, std=0.5 if p.ndim == 1 else 0.05)
    return model


def to_chatglm_state_dict(glm: transformers.GlmForCausalLM) -> dict:
    """The key mapping (docs/models.md), inverted: Glm keys -> the chatglm checkpoint keys."""
    sd, out = glm.state_dict(), {}
    out["transformer.embedding.word_embeddings.weight"] = sd["model.embed_tokens.weight"]
    out["transformer.encoder.final_layernorm.weight"] = sd["model.norm.weight"]
    out["transformer.output_layer.weight"] = sd["lm_head.weight"]
    for i in range(glm.config.num_hidden_layers):
        g, c = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        for kind in ("weight", "bias"):  # fused rows [q heads*d | kv*d | kv*d]
            out[c + f"self_attention.query_key_value.{kind}"] = torch.cat(
                [sd[g + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
        out[c + "self_attention.dense.weight"] = sd[g + "self_attn.o_proj.weight"]
        out[c + "mlp.dense_h_to_4h.weight"] = sd[g + "mlp.gate_up_proj.weight"]
        out[c + "mlp.dense_4h_to_h.weight"] = sd[g + "mlp.down_proj.weight"]
        out[c + "input_layernorm.weight"] = sd[g + "input_layernorm.weight"]
        out[c + "post_attention_layernorm.weight"] = sd[g + "post_attention_layernorm.weight"]
    return {k: v.clone().contiguous() for k, v in out.items()}


def write_chatglm_checkpoint(path, c: dict, rope_ratio, fmt: str):
    """The release layout: chatglm config.json + `.bin` (with rotary inv_freq) or safetensors."""
    glm = glm_reference(c, rope_ratio or 1)
    sd = to_chatglm_state_dict(glm)
    config = {"model_type": "chatglm", "architectures": ["ChatGLMModel"], "rmsnorm": True,
              "original_rope": True, "torch_dtype": "float32", **c}
    if rope_ratio is not None:
        config["rope_ratio"] = rope_ratio
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    if fmt == "bin":
        d = c["kv_channels"] // 2  # the original stores its (wrongly based for ratio != 1) inv_freq buffer
        sd["transformer.rotary_pos_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
        torch.save(sd, path / "pytorch_model.bin")
    else:
        save_file(sd, path / "model.safetensors")
    return glm


def ids(vocab, *shape, seed=0):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rope_ratio,fmt", [(1, "bin"), (200, "safetensors"), (None, "safetensors")])
def test_logits_equal_glm_through_key_mapping(tmp_path, rope_ratio, fmt):
    glm = write_chatglm_checkpoint(tmp_path, CHATGLM3_TINY, rope_ratio, fmt)
    if rope_ratio is None:  # rope_ratio absent from config.json means 1
        cfg = json.loads((tmp_path / "config.json").read_text())
        assert "rope_ratio" not in cfg
    ours = ChatGLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    x = ids(160, 2, 48)
    with torch.no_grad():
        diff = (ours(x).logits - glm(x).logits).abs().max().item()
    print(f"PARITY chatglm ({fmt}, rope_ratio {rope_ratio}) vs GlmForCausalLM: max|diff| {diff:.1e}")
    assert diff <= 1e-5, f"rope_ratio {rope_ratio}: max |diff| {diff:.2e}"


def test_negative_control_wrong_rope_ratio_differs(tmp_path):
    glm = write_chatglm_checkpoint(tmp_path, CHATGLM3_TINY, 200, "bin")
    ours = ChatGLMForConditionalGeneration.from_pretrained(tmp_path, rope_ratio=1).eval()
    x = ids(160, 1, 48)
    with torch.no_grad():
        control = (ours(x).logits - glm(x).logits).abs().max().item()
    print(f"PARITY control (rope_ratio 200 checkpoint read with 1): max|diff| {control:.1e}")
    assert control > 1e-3


def test_glm4_shaped_checkpoint_loads_through_load_model(tmp_path):
    glm = write_chatglm_checkpoint(tmp_path, GLM4_TINY, 500, "safetensors")
    ours = load_model(tmp_path).eval()
    assert isinstance(ours, ChatGLMForConditionalGeneration) and ours.config.vocab_size == 151552
    x = ids(151552, 1, 24)
    with torch.no_grad():
        diff = (ours(x).logits - glm(x).logits).abs().max().item()
    print(f"PARITY GLM-4-shaped chatglm checkpoint vs GlmForCausalLM: max|diff| {diff:.1e}")
    assert diff <= 1e-5


@pytest.fixture(scope="module")
def chatglm(tmp_path_factory):
    path = tmp_path_factory.mktemp("chatglm")
    glm = write_chatglm_checkpoint(path, CHATGLM3_TINY, 200, "bin")
    return glm, ChatGLMForConditionalGeneration.from_pretrained(path).eval(), path


def test_packed_loss_and_gradients_equal_per_sequence(chatglm):
    _, ours, _ = chatglm
    lengths = [9, 1, 14, 20]
    x = ids(160, 1, sum(lengths), seed=3)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    labels = x.clone()
    labels[0, cu[:-1].long()] = IGNORE_INDEX
    weights = torch.rand(1, x.shape[1], generator=torch.Generator().manual_seed(3))
    bounds = cu.tolist()

    def grads(packed):
        ours.zero_grad()
        if packed:
            loss = ours(x, cu_seqlens=cu, labels=labels, loss_weights=weights).loss
        else:
            loss = sum(ours(x[:, s:e], labels=labels[:, s:e], loss_weights=weights[:, s:e]).loss
                       for s, e in zip(bounds[:-1], bounds[1:], strict=False))
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in ours.named_parameters()}

    (lp, gp), (la, ga) = grads(True), grads(False)
    assert abs(lp - la) <= 1e-5 * abs(la)
    assert max((gp[n] - ga[n]).abs().max().item() for n in gp) <= 1e-5
    with torch.no_grad():  # negative control: without cu_seqlens sequences see each other
        assert abs(ours(x, labels=labels, loss_weights=weights).loss.item() - la) > 1e-3


def test_generate_with_kv_cache_matches_glm_and_round_trips(chatglm, tmp_path):
    glm, ours, _ = chatglm
    x = ids(160, 1, 7)
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        expected = glm.generate(x, **kw)
        assert torch.equal(ours.generate(x, **kw), expected)
        assert torch.equal(ours.generate(x, cache_implementation="static", **kw), expected)
    ours.save_pretrained(tmp_path)  # saved in the chatglm format, loads back the same
    again = ChatGLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "chatglm"
    with torch.no_grad():
        assert torch.equal(again(x).logits, ours(x).logits)


def test_config_defaults_are_chatglm3():
    c = ChatGLMConfig()
    assert (c.num_hidden_layers, c.vocab_size, c.rope_ratio, c.num_key_value_heads) == (28, 65024, 1.0, 32)
    with pytest.raises(ValueError, match="rmsnorm"):
        ChatGLMConfig(rmsnorm=False)


def test_chat_uses_the_paper_format(tmp_path, tokenizer):
    chat = pytest.importorskip("longalign.chat", reason="longalign/chat.py comes from the data branch")
    write_chatglm_checkpoint(tmp_path, {**CHATGLM3_TINY, "padded_vocab_size": len(tokenizer)}, 200, "bin")
    ours = ChatGLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    response, history = ours.chat(tokenizer, "hello", history=[("hi", "there")], max_new_tokens=4)
    assert isinstance(response, str) and [m["role"] for m in history] == ["user", "assistant"] * 2
    assert "[Round 2]" in chat.build_prompt(history[:3], "chatglm", tokenizer)
