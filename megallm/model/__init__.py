"""The Llama-architecture decoder: configuration, layers, attention dispatch, FLOPs.

- config.py     ModelConfig (no torch or megatron imports: configs compose in a second)
- layers.py     RMSNorm, RoPE, SwiGLU, grouped-query attention on megatron-core TP layers
- attention.py  one kernel dispatch: flash-attn or SDPA, causal or document-masked
- packing.py    document ids and positions of packed windows
- llama.py      the decoder as a flat list of layer definitions (shared by PP=1 and PP>1)
- weights.py    canonical weights -> a model ready for generation or verification
- flops.py      parameter counts, training FLOPs per token
"""
