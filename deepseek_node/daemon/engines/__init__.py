"""Engines behind the gateway, each in its own subpackage behind one interface."""
