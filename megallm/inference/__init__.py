"""Text generation from a trained or imported model, with a KV cache.

- weights.py   canonical weights (checkpoint or Hugging Face folder) -> LlamaModel
- sampling.py  next token from logits: greedy, temperature, top-k, top-p
- generate.py  left-padded batches of prompts, prefill and decode over the KV cache
- cli.py       `tools/generate.py`: prompts in, completions and tokens/s out

Prompt convention: megallm trains on packed documents in which the end-of-document
token STARTS the next document (megallm.model.packing), so the model has learned to
begin a document after that token. A prompt is fed as `[eos_id] + prompt tokens`; the
command line does so unless given --no-bos. `generate` itself takes token ids as given.
"""
