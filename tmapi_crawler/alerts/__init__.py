"""Alerts: rules over what a crawl changed, sent through Apprise when the crawl ends."""
