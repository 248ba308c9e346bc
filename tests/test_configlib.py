import os

import pytest

from jaxattn import configlib


def test_parse_arg_types_and_defaults():
  arg = configlib.parse_arg("smoke,epochs=5,lr=0.5,name=x", smoke=False,
                            epochs=25, lr=1.0, name="y", flag=True)
  assert arg.smoke is True and arg.flag is True
  assert arg.epochs == 5 and isinstance(arg.epochs, int)
  assert arg.lr == 0.5 and arg.name == "x"
  assert configlib.parse_arg(None, epochs=3).epochs == 3
  assert configlib.parse_arg("flag=false", flag=True).flag is False


def test_parse_arg_unknown_key_lists_valid_ones():
  with pytest.raises(ValueError, match=r"Unknown config argument 'epoch'.*"
                     r"smoke=False.*epochs=25"):
    configlib.parse_arg("epoch=3", smoke=False, epochs=25)


@pytest.mark.parametrize("arg,msg", [("epochs=x", "not a valid int"),
                                     ("epochs", "needs a value"),
                                     ("smoke=maybe", "not a valid bool")])
def test_parse_arg_bad_values(arg, msg):
  with pytest.raises(ValueError, match=msg):
    configlib.parse_arg(arg, smoke=False, epochs=25)


def test_duration_needs_exactly_one():
  c = configlib.base_config()
  with pytest.raises(ValueError, match="exactly one"):
    configlib.check_duration(c)
  c.num_epochs = 2
  configlib.check_duration(c)
  c.num_steps = 10
  with pytest.raises(ValueError, match="--config.num_epochs=0"):
    configlib.check_duration(c)


def _quickstart(**overrides):
  return configlib.load("quickstart:smoke", overrides)


@pytest.mark.parametrize("key,value,message", [
    ("num_epochs", -3, r"config.num_epochs=-3 must be >= 0.*"
     r"--config.num_epochs=3"),
    ("num_steps", -5, r"config.num_steps=-5 must be >= 0"),
    ("schedule.lr", -3e-3, r"config.schedule.lr=-0.003 must be finite and >= 0"
     r".*--config.schedule.lr=0.003"),
    ("schedule.lr", float("nan"), r"config.schedule.lr=nan must be finite"),
    # quickstart's warmup_cosine with end_lr set: optax would ignore end_lr.
    ("schedule.lr", 0.0, r"config.schedule.lr=0.0 with end_lr=0.0001: .*"
     r"the peak must be > 0"),
    ("schedule.init_lr", -1e-4, r"config.schedule.init_lr=-0.0001"),
    ("schedule.end_lr", -1.0, r"config.schedule.end_lr=-1.0 .* >= 0"),
    ("schedule.warmup_epochs", -2.0, r"config.schedule.warmup_epochs=-2.0"),
    ("schedule.warmup_steps", -1, r"config.schedule.warmup_steps=-1"),
    ("schedule.decay_steps", -1, r"config.schedule.decay_steps=-1"),
])
def test_duration_and_learning_rate_must_be_valid(key, value, message):
  """Negative durations and rates trained nothing and exited 0."""
  overrides = {"schedule.end_lr": 1e-4, key: value}
  if key == "num_steps":  # Exactly one duration is set.
    overrides["num_epochs"] = 0
  config = _quickstart(**overrides)
  with pytest.raises(configlib.ConfigError, match=message):
    configlib.check_duration(config)


@pytest.mark.parametrize("schedule,message", [
    (dict(name="exponential", decay_rate=-0.5), r"decay_rate=-0.5"),
    (dict(name="exponential", decay_every_epochs=0.0),
     r"decay_every_epochs=0.0 must be finite and > 0"),
    (dict(name="constant", lr=-1.0), r"schedule.lr=-1.0"),
    (dict(name="piecewise_linear", knots=((0, 0.0), (5, -0.01))),
     r"every learning rate must be finite and >= 0"),
    (dict(name="piecewise_linear", knots=((0, 0.0), (-5, 0.1))),
     r"non-negative, non-decreasing epochs"),
])
def test_every_schedule_kind_checks_its_rates(schedule, message):
  config = configlib.base_config()
  config.num_epochs = 1
  config.schedule.update(schedule)
  with pytest.raises(configlib.ConfigError, match=message):
    configlib.check_duration(config)


def test_a_zero_learning_rate_is_allowed():
  """lr=0 keeps the weights and updates only BatchNorm statistics (as
  tests/test_convert.py does on purpose)."""
  for name in ("constant", "warmup_cosine", "exponential"):
    config = configlib.base_config()
    config.num_steps = 1
    config.schedule.update(name=name, lr=0.0, end_lr=0.0)
    configlib.check_duration(config)


def test_bundled_configs_pass_the_duration_check():
  for name in sorted(os.listdir(configlib.CONFIGS_DIR)):
    if name.endswith(".py") and not name.startswith("_"):
      configlib.check_duration(configlib.load(name))
