"""Thin aiohttp handlers: decode, call one service function, encode."""
