"""Measuring the product: metrics, the dataset evaluation harness (`anomalygpt eval`), the
speed benchmark (`anomalygpt bench`) and the chat consistency check (`chat_check`)."""
