"""One module per command; each `run(args)` takes parsed values and returns an exit code."""
