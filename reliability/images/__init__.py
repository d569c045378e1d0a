"""The known-good image registry: every deploy, and the digests each service is known to
run well on."""
