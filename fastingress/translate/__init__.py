"""Pure translation: Kubernetes objects (plain dicts) -> Snapshot + diagnostics.

See ``core`` for the theory of operation and ``annotations`` for the annotation table.
"""

from fastingress.translate.core import translate
from fastingress.translate.model import Diagnostic, Severity, TranslateOptions, TranslationResult

__all__ = ["Diagnostic", "Severity", "TranslateOptions", "TranslationResult", "translate"]
