"""SGLang-protocol test server (test double; never imported by the product)."""

from tests.sglang_server.server import DEFAULT_RULES, Rule, SimulatedSGLang

__all__ = ["DEFAULT_RULES", "Rule", "SimulatedSGLang"]
