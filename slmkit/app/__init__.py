"""The local app: an OpenAI-compatible API server (`slmkit serve api`) and a Gradio UI (`slmkit serve ui`).

Both submit their work to one place, `slmkit.app.generation.GenerationService`, which owns the runtime.
The app imports serve, hub and agents only (tests/test_architecture.py).
"""
