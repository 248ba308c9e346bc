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
