"""Serving a trained model over HTTP (``server``) and its page (``static/``).
"""
