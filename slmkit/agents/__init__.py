"""Agents: ReAct on HotpotQA, FEVER, ALFWorld and WebShop, offline, on any runtime (see agents.base)."""
