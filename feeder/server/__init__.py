"""The gRPC edge of the feeder: request validation, message conversion, the servicer and
the server process around them. Protobuf types appear only in this package."""

from feeder.server.app import FeederServer, StartupError, open_store, serve
from feeder.server.servicer import FeederServicer
from feeder.server.validate import Limits, ValidationError

__all__ = [
    "FeederServer",
    "FeederServicer",
    "Limits",
    "StartupError",
    "ValidationError",
    "open_store",
    "serve",
]
