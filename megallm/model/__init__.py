"""The Llama-architecture decoder: configuration, layers, attention dispatch, FLOPs.

megatron-core warns at import that Transformer Engine and Apex are absent; megallm uses
neither (its layers fall back to PyTorch), so that one warning is silenced here.
"""

import warnings

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
