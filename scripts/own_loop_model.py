"""The model of scripts/example_own_loop.py, in a module of its own so that `precisionlab sharpness`
can import its factory ("own_loop_model:tiny_llama", recorded by precisionlab.track): a factory
defined inside a script run as __main__ could not be imported by another process. Importable when
scripts/ is on the path: the example runs from there, and for the command

    PYTHONPATH=scripts precisionlab sharpness --store results/own_loop.db --sweep own-loop
"""


def tiny_llama(config: dict):
    """A Hugging Face Llama built from `config["model"]` (HF's LlamaConfig keys; `name` is ours), no
    download, unconverted: precisionlab.track's factory contract (precisionlab.run.track)."""
    from transformers import LlamaConfig, LlamaForCausalLM  # the hf extra, only when a model is built

    keys = {key: value for key, value in config["model"].items() if key != "name"}
    return LlamaForCausalLM(LlamaConfig(**keys))
