"""The Streamlit web chat: ``streamlit run chat_ui/app.py -- [--checkpoint C]``.

`app.py` is the page; `inputs.py` holds the pure helpers (upload checks, tables, PNG/JSON
encoding) so they can be tested without a browser.
"""
from pathlib import Path

APP_PATH = Path(__file__).resolve().parent / "app.py"

__all__ = ["APP_PATH"]
