"""A tiny shop: Django's auth, a cart, and sessions on pooled_sessions."""
