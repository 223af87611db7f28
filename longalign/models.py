"""load_model(path): the right model class for a checkpoint, picked by `config.model_type`.

    chatglm                 -> modeling_chatglm.ChatGLMForConditionalGeneration (no remote code)
    llama, mistral, qwen2   -> modeling_llama.LlamaForCausalLM (packed attention + loss weights)
    anything else           -> transformers.AutoModelForCausalLM, which REFUSES cu_seqlens and loss_weights:
                               a stock model takes **kwargs and would silently ignore both (attention across
                               the sequences of a pack, a token-mean loss); `refusal` says so in one sentence

The model files live at the repository root (users edit them); they import as top-level modules through
the editable install (pyproject.toml, scripts/setup_env.sh) or PYTHONPATH. model_config(path) reads only
config.json, so scripts check a model argument before they write or load anything.
"""

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig

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
    return (f"{model_type} models cannot take packing (cu_seqlens) or loss weights here: transformers' own class "
            f"would silently ignore both (attention across packed sequences, a token-mean loss); train a "
            f"{'/'.join(LLAMA_FAMILY)} or chatglm checkpoint instead")


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
    model = AutoModelForCausalLM.from_pretrained(path_or_id, **from_pretrained_kwargs)
    _refuse_packing_and_weights(model, refusal(config_dict))
    return model
