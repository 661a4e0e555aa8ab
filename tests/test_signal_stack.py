"""`pipeline.signal_stack`: after OpenVINO compiles a network, the compiling thread's alternate
signal stack is one of ours (OpenVINO's CPU plugin leaves a ~10 kB one of its own there, which
Python's signal handlers ran on: a SIGTERM after it segfaulted `percept bench`)."""

from __future__ import annotations

import glob
import threading

from pipeline.signal_stack import SIZE, current, own_signal_stack


def on_a_thread(fn):
    seen = {}

    def run() -> None:
        seen["before"] = current()
        seen["kept"] = fn()
        seen["after"] = current()

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(300)
    assert not worker.is_alive() and "after" in seen, f"the network did not load on its thread: {seen}"
    return seen


def test_openvinos_compile_leaves_a_stack_of_its_own_which_is_replaced(models_dir):
    """What the module is for (if OpenVINO stops doing it, this says so), and that it replaces it."""
    import openvino as ov

    xml = glob.glob(f"{models_dir}/yolo11n_int8_openvino_model/*.xml")[0]
    seen = on_a_thread(lambda: ov.Core().compile_model(xml, "CPU"))
    assert seen["before"][2] == 0 and seen["after"][1] == 0 and 0 < seen["after"][2] < SIZE, seen
    mine = on_a_thread(lambda: (ov.Core().compile_model(xml, "CPU"), own_signal_stack(), current())[-1])
    assert mine["kept"][2] == SIZE and mine["after"] == mine["kept"], mine


def test_a_thread_that_loaded_a_network_of_ours_handles_signals_on_a_stack_of_ours(models_dir):
    from pipeline.privacy import PlateFinder

    xml = glob.glob(f"{models_dir}/vehicle-license-plate-detection-barrier-0106/**/*.xml", recursive=True)[0]
    seen = on_a_thread(lambda: PlateFinder(xml, score=0.5))
    assert seen["before"][2] == 0 and seen["after"][1] == 0 and seen["after"][2] == SIZE, seen
