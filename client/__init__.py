"""AIT Market client: the async SDK (`CoordinatorClient`), its blocking wrapper (`Client`)
and the `ait` command line (client.cli). See docs/client.md."""

from client.errors import AitError, ApiError
from client.sdk import CoordinatorClient
from client.sync import Client

__version__ = "0.1.0"
__all__ = ["AitError", "ApiError", "Client", "CoordinatorClient", "__version__"]
