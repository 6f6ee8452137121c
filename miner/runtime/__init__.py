"""Miner runtimes: the PyTorch work a miner is paid for (docs/runtimes.md).

``base`` holds the interface, ``registry`` finds runtimes by name (importing torch only
when a runtime module is first used) and caches loaded models. One module per runtime:
``text_generation``, ``embedding``, ``torchscript``, ``training``, ``benchmark``, ``echo``.
"""
