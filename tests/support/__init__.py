"""What the tests and the bench scripts share: running `ftw` (runner.py), the models, tokenizers and
GGUFs built from what this machine has (models.py), and small documents for `ftw data synth`
(documents.py). Plain modules, not pytest fixtures: pytest collects nothing here (no test_*.py), and
tests/conftest.py holds the fixtures.

Imported as `tests.support` everywhere: pytest puts the repository on the import path (pyproject.toml's
`pythonpath`), a bench script with `import repo_path` (bench/repo_path.py)."""
