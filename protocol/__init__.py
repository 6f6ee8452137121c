"""Pure shared contract of AIT Market: canonical JSON, keys, money, ids, times, wire messages.

Imports no aiohttp, websockets, sqlalchemy or torch; every other package may import it.
"""
