"""Text generation from a trained or imported model, with a KV cache.

- sampling.py  next token from logits: greedy, temperature, top-k, top-p
- generate.py  left-padded batches of prompts, prefill and decode over the KV cache
- context.py   the context a model was trained at (a checkpoint's train.seq_len, a Hugging Face
               folder's max_position_embeddings): evaluation's bound, generation's warning

The model comes from megallm.model.weights (canonical weights of a checkpoint or a
Hugging Face folder); `tools/generate.py` (megallm.cli.generate) puts it together.

Prompt convention: a prompt begins as the model's documents begin in training
(megallm.model.packing): with the tokenizer's bos when its post-processor adds one
(Llama 2 / 3), else after megallm's end-of-document token, which STARTS the next
document. A prompt is fed as `[SpecialTokens.document_start_id] + prompt tokens`; the
command line does so unless given --no-bos. `generate` itself takes token ids as given.
"""
