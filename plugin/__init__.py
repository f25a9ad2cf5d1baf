"""The Flask app: install and auth, the embedded page and its JSON API, the Admin client."""
