"""Operator commands: send a request, render a template, list and replay dead letters."""
