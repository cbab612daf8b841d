"""Every benchmark and load driver: `python -m loadtest` (what `hdfpay bench` and `hdfpay loadtest` run)
and the locust scenarios. Nothing imports it."""
