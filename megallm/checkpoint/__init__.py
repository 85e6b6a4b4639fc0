"""Checkpoints: what one holds, saving and resuming, layout-free state, conversions.

- state.py     the folder layout, RunState, which checkpoint to resume and whether it fits
- saving.py    write a checkpoint from an engine (published atomically), resume an engine
- portable.py  the full model and Adam state without a layout: gather from / apply to any layout
- hf.py        megallm weights <-> Hugging Face Llama tensors and folder (with tokenizer and model files)
- hf_config.py Hugging Face config.json (transformers 4 and 5 layouts) <-> ModelConfig, refusals
- convert.py   export, import, reshard, verify (tools/convert_ckpt.py)
"""
