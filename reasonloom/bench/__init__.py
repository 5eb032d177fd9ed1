"""`reasonloom bench`: accuracy, cost, tokens, latency and energy of recipes on datasets."""
