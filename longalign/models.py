"""load_model(path): the right model class for a checkpoint, picked by `config.model_type`.

    chatglm                 -> modeling_chatglm.ChatGLMForConditionalGeneration (no remote code)
    llama, mistral, qwen2   -> modeling_llama.LlamaForCausalLM (packed attention + loss weights)
    any other decoder-only  -> the family's own transformers class with our forward (longalign/any_model.py:
                               cu_seqlens + loss weights through transformers' attention interface)
    anything else           -> transformers.AutoModelForCausalLM, which REFUSES cu_seqlens and loss_weights:
                               a stock model takes **kwargs and would silently ignore both (attention across
                               the sequences of a pack, a token-mean loss); `refusal` says so in one sentence

The model files live at the repository root (users edit them); they import as top-level modules through
the editable install (pyproject.toml, scripts/setup_env.sh) or PYTHONPATH. model_config(path) reads only
config.json, so scripts check a model argument before they write or load anything.
"""

from pathlib import Path

import transformers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from longalign import any_model
from longalign.scriptargs import UserError, missing_path

LLAMA_FAMILY = ("llama", "mistral", "qwen2")


def model_config(path_or_id) -> dict:
    """The checkpoint's config.json (read in milliseconds, so scripts check the model before they write or load
    anything); a path or hub id without one is a UserError naming it."""
    path, fix = Path(path_or_id), "pass a model folder (config.json + weights) or a hub id"
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"--model_name_or_path {path_or_id} has no config.json; {fix}")
    if missing_path(path_or_id):
        raise UserError(f"--model_name_or_path {path_or_id} does not exist; {fix}")  # a path, not a hub id
    try:
        return PreTrainedConfig.get_config_dict(str(path_or_id))[0]
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"--model_name_or_path {path_or_id}: no config.json locally or on the hub ({reason}); "
                        f"{fix}") from None


# What our forward contract adds; a stock transformers model swallows each of these through **kwargs
PACKING_AND_WEIGHTS = ("cu_seqlens", "loss_weights", "shift_labels", "shift_loss_weights", "row_cu_seqlens")


def refusal(config_dict: dict) -> str | None:
    """None when load_model gives this checkpoint cu_seqlens and loss_weights, else the one sentence that says
    why not and what to do (train.py stops with it before loading anything: every batch it builds carries
    loss weights, and a pack carries cu_seqlens)."""
    model_type = config_dict.get("model_type")
    if model_type == "chatglm" or model_type in LLAMA_FAMILY:
        return None
    cls = causal_lm_class(model_type)
    why = "transformers has no causal-LM class for it" if cls is None else any_model.why_not(cls)
    other_layers = sorted(set(config_dict.get("layer_types") or ()) - {"full_attention", "sliding_attention"})
    if why is None and other_layers:  # e.g. linear attention or state-space layers: they mix tokens across a pack
        why = f"its {'/'.join(other_layers)} layers mix tokens outside attention"
    if why is None:
        return None
    return (f"{model_type} models cannot take packing (cu_seqlens) or loss weights here ({why}), and transformers' "
            f"own class would silently ignore both (attention across packed sequences, a token-mean loss): train "
            f"a family of docs/models.md's support table instead")


def causal_lm_class(model_type: str):
    """transformers' causal-LM class for a model_type (no weights read), or None."""
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    return getattr(transformers, name, None) if isinstance(name, str) else None


def _refuse_packing_and_weights(model, sentence: str) -> None:
    """Make a stock model raise `sentence` when a forward is given any of PACKING_AND_WEIGHTS."""

    def hook(module, args, kwargs):
        if any(kwargs.get(k) is not None for k in PACKING_AND_WEIGHTS):
            raise ValueError(sentence)

    model.register_forward_pre_hook(hook, with_kwargs=True)


def load_model(path_or_id, **from_pretrained_kwargs):
    """from_pretrained through our model files where we have one; kwargs go to from_pretrained. A model without
    our forward contract raises `refusal`'s sentence when a forward is given cu_seqlens or loss weights."""
    config_dict = model_config(path_or_id)
    model_type = config_dict.get("model_type")
    if model_type == "chatglm":  # AutoConfig would need the checkpoint's remote code for this one
        from modeling_chatglm import ChatGLMForConditionalGeneration

        return ChatGLMForConditionalGeneration.from_pretrained(path_or_id, **from_pretrained_kwargs)
    if model_type in LLAMA_FAMILY:
        from modeling_llama import LlamaForCausalLM

        config = AutoConfig.from_pretrained(path_or_id)  # Mistral/Qwen2 keep their own config class
        return LlamaForCausalLM.from_pretrained(path_or_id, config=config, **from_pretrained_kwargs)
    if (sentence := refusal(config_dict)) is None:  # the family's own class, our forward (longalign/any_model.py)
        cls = any_model.wrap(causal_lm_class(model_type))
        # attn_implementation: ours whatever the caller asked (it runs transformers' sdpa/eager outside packed rows)
        return cls.from_pretrained(path_or_id, **{**from_pretrained_kwargs, "attn_implementation": any_model.NAME})
    model = AutoModelForCausalLM.from_pretrained(path_or_id, **from_pretrained_kwargs)
    _refuse_packing_and_weights(model, sentence)
    return model
