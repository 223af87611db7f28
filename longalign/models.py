"""load_model(path): the right model class for a checkpoint, picked by `config.model_type`.

    chatglm                 -> modeling_chatglm.ChatGLMForConditionalGeneration (no remote code)
    llama, mistral, qwen2   -> modeling_llama.LlamaForCausalLM (packed attention + loss weights)
    anything else           -> transformers.AutoModelForCausalLM (no cu_seqlens / loss_weights)

The model files live at the repository root (users edit them), so the root must be importable:
it is when a root script (train.py, the evaluation scripts) runs, and in the tests.
"""

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig

LLAMA_FAMILY = ("llama", "mistral", "qwen2")


def load_model(path_or_id, **from_pretrained_kwargs):
    """from_pretrained through our model files where we have one; kwargs go to from_pretrained."""
    config_dict, _ = PreTrainedConfig.get_config_dict(path_or_id)
    model_type = config_dict.get("model_type")
    if model_type == "chatglm":  # AutoConfig would need the checkpoint's remote code for this one
        from modeling_chatglm import ChatGLMForConditionalGeneration

        return ChatGLMForConditionalGeneration.from_pretrained(path_or_id, **from_pretrained_kwargs)
    if model_type in LLAMA_FAMILY:
        from modeling_llama import LlamaForCausalLM

        config = AutoConfig.from_pretrained(path_or_id)  # Mistral/Qwen2 keep their own config class
        return LlamaForCausalLM.from_pretrained(path_or_id, config=config, **from_pretrained_kwargs)
    return AutoModelForCausalLM.from_pretrained(path_or_id, **from_pretrained_kwargs)
