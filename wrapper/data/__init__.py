"""The user's data: files read row by row with file:line, one format detector, `ftw data check`
and `ftw data prepare`, and dataset files as LLaMA-Factory reads them."""
