"""Any transformers decoder-only causal LM through longalign.models.load_model: it takes our forward contract
(cu_seqlens, loss_weights) or refuses it in one sentence, never silently ignores it."""

import pytest
import torch
import transformers

import train
from longalign.models import load_model


def tiny(family: str, **overrides):
    """A random 2-layer model of `family` (transformers' own config class), fp32."""
    sizes = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, max_position_embeddings=256)
    config = transformers.AutoConfig.for_model(family, **{**sizes, **overrides})
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).float().eval()


def test_a_model_without_our_contract_refuses_packing_and_weights(tmp_path, capsys):
    tiny("qwen3").save_pretrained(tmp_path / "qwen3")
    model = load_model(tmp_path / "qwen3")
    x = torch.randint(0, 96, (1, 12))
    model(x)  # a plain forward still works
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    for kwargs in ({"cu_seqlens": cu}, {"labels": x, "loss_weights": torch.ones(1, 12)}):
        with pytest.raises(ValueError, match="qwen3 models cannot take packing"):
            model(x, **kwargs)
    capsys.readouterr()
    # train.py stops before it reads the data or loads the model: every batch it builds carries loss weights
    with pytest.raises(SystemExit) as e:
        train.main(["--model_name_or_path", str(tmp_path / "qwen3"), "--train_dir", str(tmp_path / "none"),
                    "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--batch_method", "pack"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "qwen3 models cannot take packing (cu_seqlens) or loss weights" in err[0], err
