"""Settings profiles: each module overlays ``tmapi_crawler.settings`` for one way of running.

Chosen the Scrapy way — ``scrapy.cfg`` maps names to modules under ``[settings]`` and
``SCRAPY_PROJECT=<name>`` picks one (``default`` when unset):

* ``local`` (the default): one process, its own queue and concurrency limit;
* ``distributed``: workers on any number of machines share a Redis queue and one limit;
* ``production``: ``distributed`` tuned for long unattended crawls.
"""
