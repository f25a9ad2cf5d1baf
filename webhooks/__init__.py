"""The webhook receiver: verify the HMAC, claim the delivery, enqueue, answer."""
