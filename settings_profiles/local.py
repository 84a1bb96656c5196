"""The default profile: one process, nothing shared, exactly ``tmapi_crawler.settings``.

Requests queue in memory, the concurrency limit is counted in this process, MongoDB is
``MONGO_URI`` or the embedded local mongod. Nothing needs Redis.
"""

from tmapi_crawler.settings import *  # noqa: F403
