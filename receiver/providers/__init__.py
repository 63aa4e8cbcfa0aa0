"""Provider adapters, one module each, chosen by the configured provider type."""

from __future__ import annotations

import httpx

from receiver.config import ProviderConfig
from receiver.providers.apimodels import Apimodels
from receiver.providers.base import Provider
from receiver.providers.fal import Fal
from receiver.providers.kling import Kling
from receiver.providers.kvid import Kvid
from receiver.providers.luma import Luma
from receiver.providers.minimax import MiniMax
from receiver.providers.newapi import NewApi
from receiver.providers.pixverse import PixVerse
from receiver.providers.replicate import Replicate
from receiver.providers.revid import Revid
from receiver.providers.runway import Runway
from receiver.providers.veo import Veo
from receiver.providers.vidu import Vidu

ADAPTERS: dict[str, type[Provider]] = {
    "vidu": Vidu,
    "kvid": Kvid,
    "revid": Revid,
    "apimodels": Apimodels,
    "newapi": NewApi,
    "kling": Kling,
    "runway": Runway,
    "luma": Luma,
    "minimax": MiniMax,
    "replicate": Replicate,
    "fal": Fal,
    "pixverse": PixVerse,
    "veo": Veo,
}


def build(config: ProviderConfig, client: httpx.AsyncClient) -> Provider:
    return ADAPTERS[config.type](config, client)
