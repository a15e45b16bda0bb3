"""NeuralDrive llama-server TEST DOUBLE (not llama.cpp): what lib/ollama/llama-server runs.

Stands in for llama.cpp's server (tools/server/server.cpp, the build Ollama ships in its archive)
in single-model mode, for both of its callers: `ollama serve` (a child per loaded model) and the
appliance's neuraldrive-llama-server unit. See ../../../BEHAVIOUR.md (llama-server table).
Standard library only.
"""
