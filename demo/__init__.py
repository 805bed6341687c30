"""The parts of the Gradio demo (app.py): the models, a session's set, its handlers, the example sets."""
