"""Every registered model's ModelSpec holds together.

A spec names parts of its model by path: explain's Grad-CAM layer, its
attention modules and CAM head, the converter's layouts. Renaming a
submodule must fail here, not silently in ``python -m jaxattn.explain`` or a
converted checkpoint. Shapes only (``jax.eval_shape``): nothing is compiled.
"""

import functools
import glob
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxattn import configlib, explain, models
from jaxattn.convert import commands, plan, rules
from jaxattn.inference import Run

REPO = pathlib.Path(__file__).resolve().parents[1]


def _smoke_configs() -> dict[str, ml_collections.ConfigDict]:
  """model name -> the first bundled config's smoke variant that builds it."""
  found = {}
  for path in sorted(glob.glob(str(REPO / "configs" / "*.py"))):
    if os.path.basename(path).startswith("_"):
      continue
    config = configlib.load(f"{path}:smoke")
    found.setdefault(config.model.name, config)
  return found


SMOKE = _smoke_configs()
# Models that classify images (explain applies); hybrid_head takes features.
IMAGE_MODELS = sorted(n for n in models.known_models()
                      if models.get_interface(n).input_kind(
                          SMOKE.get(n, configlib.base_config()))
                      == "images" and n in SMOKE)


def test_every_model_has_a_complete_spec():
  for name in models.known_models():
    spec = models.get_spec(name)
    assert spec.name == name
    assert spec.layouts, f"{name}: no converter layout"
    assert spec.torch_twin, f"{name}: no PyTorch twin"
    assert rules.get_layout(name) is spec.layouts[0]
  # Every model but the head alone has a bundled config (and so a smoke run).
  assert set(models.known_models()) - set(SMOKE) == {"hybrid_head"}


def test_registering_a_name_twice_is_refused():
  spec = models.get_spec("vit")
  with pytest.raises(ValueError, match="registered twice"):
    models.register(spec)


@functools.cache
def _model_and_variables(name):
  from jaxattn import experiment  # pylint: disable=g-import-not-at-top
  exp = experiment.Experiment(SMOKE[name], data="metadata")
  return exp.config, exp.model, exp.abstract_state.variables()


def _run(name) -> Run:
  config, model, shapes = _model_and_variables(name)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda s: rng.normal(size=s.shape).astype(s.dtype) * 0.1, shapes)
  return Run(model, variables, config, step=0)


def _images(config):
  return jnp.zeros((1, *config.image_size, config.num_channels), jnp.float32)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_explain_hooks_name_modules_of_the_model(name):
  run = _run(name)
  hooks = models.get_spec(name).explain
  outputs = explain.module_outputs(run, _images(run.config))
  # The default Grad-CAM layer exists and is spatial (resolve_layer raises
  # when the pattern matches no spatial module).
  layer = explain.resolve_layer(run, "", outputs)
  if hooks.gradcam_layer:
    assert re.fullmatch(hooks.gradcam_layer, layer), (layer, hooks)
  if hooks.attention:
    attention = [p for p in outputs if re.fullmatch(hooks.attention, p)]
    assert attention, f"{name}: no module matches {hooks.attention!r}"
    for module in attention:
      assert {f"{module}/query", f"{module}/key"} <= set(outputs), module
  if hooks.cam:
    assert any(re.fullmatch(hooks.cam.features, p) for p in outputs)
    weight, bias = hooks.cam.linear_map(run.variables["params"])
    assert weight.shape == (weight.shape[0], run.config.num_classes)
    assert bias.shape == (run.config.num_classes,)


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_every_layout_fits_the_model(name):
  _, _, variables = _model_and_variables(name)
  shapes = {k: tuple(v.shape)
            for k, v in commands.flatten_variables(variables).items()}
  for i, layout in enumerate(models.get_spec(name).layouts):
    made = plan.make_plan(layout, shapes)  # Raises on a rule that misfits.
    assert made.entries, f"{name}: layout {layout.name!r} claims nothing"
    if not layout.partial:
      assert not made.unmapped, (layout.name, made.unmapped)
    if i == 0:
      assert not layout.partial, f"{name}: the default layout is partial"


def test_unknown_model_lists_the_known_ones():
  with pytest.raises(configlib.ConfigError, match="Known models: conv_vit"):
    models.get_spec("convvit")
  assert os.path.basename(models.get_spec("vit").torch_twin.split(":")[0]
                          .replace(".", "/")) == "pytorch"
