"""The composition root: the `hdfpay` command line, settings, `serve` wiring the terminal
listener and the operator API, and the demo. Nothing but loadtest imports it."""
