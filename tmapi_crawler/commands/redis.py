"""``scrapy redis``: manage the embedded Redis that distributed crawls use without ``REDIS_URL``.

``start|stop|status|uri``, the same shape as ``scrapy mongo``. The server persists to an
append-only file under ``REDIS_EMBEDDED_DIR``, so a stopped and restarted Redis still holds the
cluster's queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tmapi_crawler.distributed import embedded as embedded_redis
from tmapi_crawler.server_command import ServerCommand

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

    from tmapi_crawler.servers import EmbeddedServer


class Command(ServerCommand):
    kind = embedded_redis.RedisServer
    product = "Redis"
    dir_setting = "REDIS_EMBEDDED_DIR"

    def server(self, settings: BaseSettings) -> EmbeddedServer:
        return embedded_redis.server(settings)
