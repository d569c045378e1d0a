"""The test rig's stand-ins, shipped as code: used by tests, benchmarks and the demo.

Each stand-in speaks the real wire format of the component it replaces (an
OpenAI-compatible server, `nvidia-smi` CSV, Slack's Web API), so the production
code paths run unchanged against it.
"""
