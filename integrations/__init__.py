"""Where it goes: the vLLM server, AutoGen teams, multi-agent debate, benchmarks and scoring."""
