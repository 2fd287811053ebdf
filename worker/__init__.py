"""Edge inference worker: IMU windows in over MQTT, Hailo-8 (or CPU) inference, results out."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hailo-edge-worker")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"
