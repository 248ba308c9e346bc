"""The base class of the errors a user fixes, not a programmer.

A run that stops on something it was given (a flag, a config value, a
workdir, a file, a dataset, a full disk, a diverging loss) raises a subclass
of :class:`BadInputError` whose message says what is wrong and what to do.
The commands print that message alone (``jaxattn.console``), since a
traceback into the code would only bury it; any other exception is a bug and
keeps its traceback.

Each subclass also keeps the built-in type it had before (``ValueError``,
``OSError``, ...), so ``except ValueError`` and the tests still catch it:

  ``configlib.ConfigError`` (ValueError)    a config key, value or file;
                                            every module's config checks
  ``configlib.ConfigUsageError``            an unknown ``--config.KEY``
  ``data.sources.DatasetError`` (ValueError)  a dataset, split or image
  ``checkpointing.CheckpointError`` (ValueError)  a missing or damaged step
  ``checkpointing.NoSpaceError`` (OSError)  a disk too full to save on
  ``workdir_lock.WorkdirLockedError`` (RuntimeError)  another run's workdir
  ``periodic.NonFiniteLossError`` (FloatingPointError)  a diverged run
  ``inference.InputError`` (ValueError)     predict / explain input
  ``weights.WeightMismatchError`` (ValueError)  weights that do not fit
  ``weights_hub.WeightsError`` (OSError)    weights that cannot be fetched
  ``pretrained.InitFromNotFoundError`` (FileNotFoundError)  init_from
  ``convert.plan.ConversionError`` (ValueError)  a checkpoint to convert
  ``convert.rules.UnknownLayoutError`` (ValueError)  a layout name
  ``distributed.LaunchError`` (ValueError)  multi-process flags
  ``accelerator_check.AcceleratorFallbackError`` (RuntimeError)  a GPU
                                            plugin that did not load
"""


class BadInputError(Exception):
  """The run cannot go on with what it was given; the message says what to
  change. Commands print it without a traceback (``--traceback`` shows it).
  """
