"""The `percept` command: one module per command (run, demo, subscribe, cameras, build, bench)
and `main`, which parses the arguments and sets up the console."""
