"""OpenVINO without its usage statistics. Importing ``openvino`` starts its telemetry
(``openvino.tools.ovc``): with no consent file in the user's home it takes consent as given and
a child process looks up and posts to Google Analytics — from every replica and command that
loads a network. `quiet_openvino` declines it for this process (before openvino is imported,
and for a telemetry already started); percept sends nothing anywhere but to its Redis."""

from __future__ import annotations

_quiet = False


def quiet_openvino() -> None:
    """OpenVINO's telemetry declined in this process (idempotent, cheap after the first call)."""
    global _quiet
    if _quiet:
        return
    _quiet = True
    try:
        from openvino_telemetry.main import Telemetry
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # (an OpenVINO without its telemetry package)
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED  # type: ignore[method-assign]
    started = getattr(Telemetry, "_SingletonMetaClass__single_instance", None)
    if started is not None:  # openvino was imported before: its statistics stop here
        started.consent = False
