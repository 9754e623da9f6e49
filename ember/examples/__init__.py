"""Runnable examples: ``python -m ember.examples.digits`` (the main demo), ``.regression``,
``.charlm``."""
