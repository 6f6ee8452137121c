"""Bounds on everything that crosses the miner <-> coordinator websocket.

One place for the numbers so the hub, the daemon and the codec agree. Sizes are bytes.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1

# A result carries its output base64-encoded (4/3 larger) next to the receipt.
MAX_OUTPUT_BYTES = 32 * 2**20
MAX_INPUT_BYTES = 16 * 2**20
MAX_MESSAGE_BYTES = 48 * 2**20
MAX_SUMMARY_BYTES = 16 * 2**10
MAX_PARAMS_BYTES = 64 * 2**10

# Batch frames (protocol/frames.py): messages a frame may hold, the largest message that
# joins a batch (bigger ones, such as large inputs and outputs, go alone) and the most
# characters of one batch frame (4 bytes a character at worst stays far below the
# message bound).
MAX_BATCH_MESSAGES = 256
MAX_BATCHED_MESSAGE_CHARS = 64 * 2**10
MAX_BATCH_FRAME_CHARS = 2**20

MAX_ID_CHARS = 64
MAX_NAME_CHARS = 128
MAX_TEXT_CHARS = 2000
MAX_GPU_GROUPS = 16
MAX_GPU_COUNT = 64
MAX_VRAM_GB = 4096
MAX_MODELS = 64
MAX_CONCURRENCY = 64
MAX_TIMEOUT_S = 30 * 24 * 3600

# Miner side: reconnect back-off (capped exponential with full jitter).
RECONNECT_BASE_S = 0.5
RECONNECT_CAP_S = 30.0
# Frames the websocket client buffers before it stops reading (backpressure).
WS_MAX_QUEUE = 16
# Seconds a miner waits for the challenge / welcome before it gives up on a connection.
HANDSHAKE_TIMEOUT_S = 10.0
