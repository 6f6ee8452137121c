"""Pure coordinator domain: job state machine, pricing, matching. Nothing here awaits."""
