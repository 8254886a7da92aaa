"""A Python client for the zero-shot CLIP classification service's HTTP API (docs/client.md).

    from zeroshot_client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as c:
        best = c.classify("cat.jpg", ["cat", "dog"]).top

Standalone: it needs httpx, and Pillow only to send PIL images; it imports nothing of the service.
"""

from zeroshot_client._core import ImageInput, RetryPolicy
from zeroshot_client.aio import AsyncClient
from zeroshot_client.errors import (
    AuthenticationError,
    ClientError,
    ConnectionFailed,
    ForbiddenError,
    LabelSetBuildFailed,
    LabelSetBuildTimeout,
    NotFoundError,
    RateLimitedError,
    RequestTimeout,
    ServerError,
    UnavailableError,
    ZeroshotError,
)
from zeroshot_client.sync import Client
from zeroshot_client.types import (
    Abstain,
    BuildFailure,
    BuildProgress,
    CalibrationState,
    Classification,
    Embeddings,
    ImageFailure,
    LabelScore,
    LabelSet,
    LabelSetEmbeddings,
    LabelSetSummary,
    ModelInfo,
    ModelRef,
)

__all__ = [
    "Abstain",
    "AsyncClient",
    "AuthenticationError",
    "BuildFailure",
    "BuildProgress",
    "CalibrationState",
    "Classification",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "Embeddings",
    "ForbiddenError",
    "ImageFailure",
    "ImageInput",
    "LabelScore",
    "LabelSet",
    "LabelSetBuildFailed",
    "LabelSetBuildTimeout",
    "LabelSetEmbeddings",
    "LabelSetSummary",
    "ModelInfo",
    "ModelRef",
    "NotFoundError",
    "RateLimitedError",
    "RequestTimeout",
    "RetryPolicy",
    "ServerError",
    "UnavailableError",
    "ZeroshotError",
]
