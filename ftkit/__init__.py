"""ftkit: the helper library of a hands-on course on fine-tuning language models.

`import ftkit` is light: it probes the Hub once (switching Hugging Face libraries to offline mode
when it cannot be reached) and imports torch and transformers only when a function needs them.
Start every notebook with `cfg = ftkit.setup()`.
"""
from .env import ensure_offline_mode as _ensure_offline_mode

_ensure_offline_mode()  # must run before huggingface_hub / transformers are imported

from .env import PROFILES, get_profile, setup  # noqa: E402

__version__ = "0.1.0"
__all__ = ["setup", "get_profile", "PROFILES", "__version__"]
