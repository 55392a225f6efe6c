"""Offline synthetic tasks: data generators that need no download."""
