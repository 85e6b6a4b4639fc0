"""Text generation from a trained or imported model, with a KV cache.

- sampling.py  next token from logits: greedy, temperature, top-k, top-p
- generate.py  left-padded batches of prompts, prefill and decode over the KV cache

The model comes from megallm.model.weights (canonical weights of a checkpoint or a
Hugging Face folder); `tools/generate.py` (megallm.cli.generate) puts it together.

Prompt convention: megallm trains on packed documents in which the end-of-document
token STARTS the next document (megallm.model.packing), so the model has learned to
begin a document after that token. A prompt is fed as `[eos_id] + prompt tokens`; the
command line does so unless given --no-bos. `generate` itself takes token ids as given.
"""
