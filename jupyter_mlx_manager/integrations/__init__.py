"""Other Jupyter extensions that use this server's models, configured for them (`jupyter_ai`)."""
