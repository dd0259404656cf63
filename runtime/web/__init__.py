"""Local web pages: the quiet request handler and the live viewer's static page."""
