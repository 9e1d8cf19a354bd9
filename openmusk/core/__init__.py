"""What every stage shares and nothing stage-specific: configs, runtime, registries, atomic I/O,
statistics, optimisers and distributed helpers. Stage folders import from here, never from the
root package."""

__version__ = "0.1.0"
