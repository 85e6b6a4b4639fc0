"""The model's flat layer list -> DeepSpeed `PipelineModule` (pipeline parallelism).

Each `LayerDef` becomes a DeepSpeed layer spec that builds from the layer's own seed,
so a stage holds exactly the weights the single-process model has at those positions.
With tied embeddings, the embedding (first stage) and the output projection (last
stage) are one `TiedLayerSpec` key: DeepSpeed broadcasts the first stage's weight at
start-up and sums the two stages' gradients before every optimizer step.

Inside a stage, parameters are named `<layer index>.<rest>` and tied ones
`tied_modules.embedding.<rest>`; `canonical_name` maps them back to the single-process
names (`blocks.3.attn.qkv.weight`).
"""

from __future__ import annotations

import contextlib
import io

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

from megallm.model.layers import TransformerBlock
from megallm.model.llama import LayerDef
from megallm.model.loss import classification_loss, objective_loss

PARTITION_METHODS = {"layers": f"type:{TransformerBlock.__name__}", "parameters": "parameters"}


class _Spec(LayerSpec):
    def __init__(self, layer: LayerDef):
        super().__init__(layer.cls)
        self.layer = layer

    def build(self, log: bool = False):
        return self.layer.build()


class _TiedSpec(TiedLayerSpec):
    def __init__(self, key: str, layer: LayerDef):
        super().__init__(key, layer.cls, forward_fn=layer.forward_fn, tied_weight_attr=["weight"])
        self.layer = layer

    def build(self, log: bool = False):
        return self.layer.build()


class LlamaPipeline(PipelineModule):
    """PipelineModule over megallm's layer list; counts parameters on the meta device.

    (DeepSpeed's own count builds every layer of the whole model on each rank's CPU.)
    """

    def _count_layer_params(self):
        return [sum(p.numel() for p in spec.layer.build(meta=True).parameters()) for spec in self._layer_specs]


def _spec(layer: LayerDef, tied_keys: set[str]) -> LayerSpec:
    if layer.tied_to is not None:
        return _TiedSpec(layer.tied_to, layer)
    if layer.name in tied_keys:
        return _TiedSpec(layer.name, layer)
    return _Spec(layer)


def build_pipeline(defs: list[LayerDef], topology, partition: str, verbose: bool) -> LlamaPipeline:
    """Cut `defs` into `topology`'s pipeline stages; this rank builds only its own stage. The last
    stage scores with the language-model loss, or a classifier's (its last layer is the classifier)."""
    tied_keys = {d.tied_to for d in defs if d.tied_to}
    specs = [_spec(d, tied_keys) for d in defs]
    # no_grad: DeepSpeed broadcasts the tied weight in place at construction, which autograd must not record.
    # redirect_stdout: DeepSpeed prints seeds and its stage table on rank 0; megallm prints one line below.
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        loss_fn = classification_loss if defs[-1].name == "classifier" else objective_loss
        module = LlamaPipeline(specs, topology=topology, loss_fn=loss_fn,
                               partition_method=PARTITION_METHODS[partition], activation_checkpoint_interval=0)
    if verbose:
        print("pipeline stages: " + " | ".join(
            f"{stage}: {describe_stage(defs[module.parts[stage]:module.parts[stage + 1]])}"
            for stage in range(module.num_stages)), flush=True)
    return module


def describe_stage(layers: list[LayerDef]) -> str:
    blocks = [int(d.name.split(".")[1]) for d in layers if d.name.startswith("blocks.")]
    others = [d.name for d in layers if not d.name.startswith("blocks.")]
    parts = others[:1] if others and others[0] == "embedding" else []
    if blocks:
        parts.append(f"blocks {blocks[0]}-{blocks[-1]}" if len(blocks) > 1 else f"block {blocks[0]}")
    parts += [n for n in others if n != "embedding"]
    return ", ".join(parts) or "(empty)"


def canonical_name(stage_name: str, defs: list[LayerDef]) -> str:
    """A stage's parameter name -> the single-process name."""
    head, rest = stage_name.split(".", 1)
    if head == "tied_modules":
        key, rest = rest.split(".", 1)
        return f"{key}.{rest}"
    return f"{defs[int(head)].name}.{rest}"
