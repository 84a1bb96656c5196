"""The sandbox's misbehaviour switches answer as a careless or hostile server would.

Raw HTTP (``urllib``, which neither asks for nor decodes compression), so what is checked is
what goes over the wire.
"""

from __future__ import annotations

import gzip
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from typing import Any

import brotli
import pytest

from tmapi_crawler import api
from tmapi_crawler.sandbox.misbehaviour import (
    ANONYMOUS_KINDS,
    COMPRESSIONS,
    ODD_KINDS,
)
from tmapi_crawler.sandbox.process import SandboxProcess

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

TOKEN = "sandbox-misbehaviour-token"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
DECODE = {"gzip": gzip.decompress, "deflate": zlib.decompress, "br": brotli.decompress,
          "zstd": zstd.decompress}


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size={"11": 400}) as process:
        yield process


def get(sandbox: SandboxProcess, **params: Any) -> tuple[int, dict[str, str], bytes]:
    query = urllib.parse.urlencode({api.TOKEN_PARAM: TOKEN, "cat_id": 11, **params})
    request = urllib.request.Request(f"{sandbox.api_url}?{query}",
                                     headers={"Accept-Encoding": "identity"})
    try:
        with NO_PROXY.open(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.mark.parametrize("encoding", COMPRESSIONS)
def test_answers_are_compressed_though_identity_was_asked_for(
    sandbox: SandboxProcess, encoding: str
) -> None:
    sandbox.configure(compress=encoding)
    status, headers, body = get(sandbox)
    assert status == 200
    assert headers["Content-Encoding"] == encoding
    assert len(json.loads(DECODE[encoding](body))["data"]["items"]) == 20
    status, headers, body = get(sandbox, page_size=500)
    assert (status, headers["Content-Encoding"]) == (422, encoding)
    assert json.loads(DECODE[encoding](body))["code"] == 422


def test_error_answers_can_carry_huge_messages(sandbox: SandboxProcess) -> None:
    sandbox.configure(message_bytes=1_000_000, fault_rates={417: 1.0}, fault_mode="body")
    status, _, body = get(sandbox)
    answer = json.loads(body)
    assert (status, answer["code"]) == (200, 417)
    assert len(answer["msg"]) == 1_000_000


def test_odd_items_are_the_ones_the_truth_names_in_every_language(
    sandbox: SandboxProcess,
) -> None:
    sandbox.configure(odd_item_rate=0.3, huge_item_bytes=4096)
    odd = sandbox.truth(cat_id=11)["odd_items"]
    assert set(odd.values()) == set(ODD_KINDS)
    for language in ("en", "zh"):
        served = [item for number in range(1, 5) for item in json.loads(
            get(sandbox, page=number, page_size=100, language=language)[2])["data"]["items"]]
        seen = {str(item["item_id"]): item for item in served}
        anonymous = [item for item in served if item["item_id"] == 10**20]
        assert len(anonymous) == sum(kind in ANONYMOUS_KINDS for kind in odd.values())
        for item_id, kind in odd.items():
            if kind in ANONYMOUS_KINDS:
                continue
            item = seen[item_id]
            expected = {
                "title_type": lambda i: i["title"] == 12345,
                "company_type": lambda i: isinstance(i["shop_info"]["company_name"], dict),
                "area_type": lambda i: i["delivery_info"]["area_from"] == "Zhejiang",
                "big_int": lambda i: i["sale_info"]["orders_total"] == 2**64,
                "nul_key": lambda i: "note\u0000" in i,
                "dollar_key": lambda i: "$where" in i,
                "dot_key": lambda i: "price.cny" in i,
                "surrogate": lambda i: "\ud800" in i["title"],
                "deep": lambda i: "x" in i["extra"],
                "huge": lambda i: len(i["description"]) == 4096,
            }[kind]
            assert expected(item), kind
        plain = [i for i in seen if i not in odd and int(i) != 10**20]
        assert plain, "most products are served as they are"


@pytest.mark.parametrize("change", [
    {"compress": "lzma"}, {"message_bytes": -1}, {"odd_item_rate": 1.5},
    {"odd_item_kinds": ["title_type", "nonsense"]},
])
def test_bad_misbehaviour_settings_are_refused(sandbox: SandboxProcess,
                                                change: dict[str, Any]) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        sandbox.configure(**change)
    assert refused.value.code == 400
