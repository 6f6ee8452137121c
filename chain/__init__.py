"""Ledger, receipts, blocks and audit of AIT Market."""
