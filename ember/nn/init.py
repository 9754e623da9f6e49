"""``ember.nn.init``: parameter initialisers."""
