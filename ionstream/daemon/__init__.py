"""The acquisition daemon: pipeline wiring, stages, publisher, control server, security, lifecycle, status.

`lifecycle.Daemon` runs it; `pipeline.Pipeline` builds and wires the stages (`stages`, `publisher`);
`control` and `security` are the server sides of the control socket and CURVE; `health`, `rates`,
`statusline` and `metrics` turn counters into status. Never imports the CLI.
"""
