"""Checkpoint conversion between jaxattn (Flax) and PyTorch.

``python -m jaxattn.convert to-torch | from-torch | layouts`` (see
``__main__``). The pieces, smallest first:

* ``tensors``: the tensor-layout adapter (Dense transpose, conv HWIO <->
  OIHW, fused qkv, channels-first tokens, ...), each rule exact both ways.
* ``rules``: the vocabulary of rule tables (Flax module paths <-> PyTorch
  keys, with the kind of layer) and ``layouts(model)``: the named layouts
  each model's ``ModelSpec`` registers (``jaxattn/models/<family>/
  layouts.py``): the seed authors' modules by default, torchvision / timm /
  vit_jax where an architecture matches them.
* ``plan``: a layout matched against one model's variables; converts both
  ways, checks every shape, reports every missing/unexpected/mis-shaped key.
* ``files``: .safetensors / torch.save / .npz reading and safe writing.
* ``commands``: a training run -> a file (``to_torch``), a file -> Flax
  variables for ``config.init_from`` (``from_torch``).

In Python::

  from jaxattn import convert
  state_dict, _ = convert.state_dict_from_variables("vit", variables)
  model = convert.torch_model_for(workdir)   # jaxattn.torch_models twin
"""

from jaxattn.convert.commands import (
    flatten_variables, from_torch, load_config_file, model_shapes,
    state_dict_from_variables, to_torch, torch_model_for, torch_model_spec,
    variables_from_state_dict)
from jaxattn.convert.plan import ConversionError, Plan, make_plan
from jaxattn.convert.rules import (Layout, check_numerics, get_layout,
                                   layouts)

__all__ = [
    "ConversionError", "Layout", "Plan", "check_numerics",
    "flatten_variables", "from_torch", "get_layout", "layouts", "load_config_file",
    "make_plan", "model_shapes", "state_dict_from_variables", "to_torch",
    "torch_model_for", "torch_model_spec", "variables_from_state_dict",
]
