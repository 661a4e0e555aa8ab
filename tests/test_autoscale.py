"""The video-lag autoscaling arithmetic (pure logic)."""

from pipeline.autoscale import FrameAgeMeter, desired_replicas


def test_scales_up_in_proportion_to_lag():
    assert desired_replicas(1, [1.5], [4], target_lag_s=0.5, target_waiting=16) == 3
    assert desired_replicas(2, [0.6, 0.2], [8, 8], target_lag_s=0.5, target_waiting=16) == 3


def test_frames_waiting_also_scale_up():
    assert desired_replicas(1, [0.1], [40], target_lag_s=0.5, target_waiting=16) == 3


def test_light_load_scales_down_and_idle_steps_down():
    assert desired_replicas(4, [0.1], [2, 2, 2, 2], target_lag_s=0.5, target_waiting=16) == 1
    assert desired_replicas(3, [], [], target_lag_s=0.5, target_waiting=16) == 2
    assert desired_replicas(0, [], [], target_lag_s=0.5, target_waiting=16) == 1


def test_meter_forgets_old_frames():
    m = FrameAgeMeter(window_s=5)
    m.observe([99.0, 98.0, None], now=100.0)
    assert m.lag_s(now=100.0) == 1.5
    assert m.lag_s(now=106.0) == 0.0
