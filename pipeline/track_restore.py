"""A starting camera's tracks: continued from the snapshot its previous owner left (`track_state`).

- **Restore** (`restore_tracking`, at camera start): the snapshot, then the frames published
  after it (read back from the detections stream) replayed through both: the tracker follows
  the published ids, the engine's events are already on the events stream and are dropped. The
  state then equals the dead owner's after its last published frame. New ids start above the
  highest id the stream has had. A camera that stopped cleanly left a ``closed`` state: it
  starts afresh. A snapshot names the camera's source (`track_state.source_of`): a camera back
  with another URL ends the tracks it left, after the replay, and starts afresh; so does one
  back without tracking (`end_left_tracks`). A snapshot whose frames cannot be replayed (too
  many since, a zone that no longer fits) ends its tracks once, brought up to the events stream
  first (`settle_left_tracks`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import redis

from . import track_replay
from .config import TrackerConfig
from .events import EventEngine, margins_of
from .source_types import is_file_url
from .track_state import STATE_SCHEMA, TrackSnapshots, end_tracks, source_of
from .tracking import ObjectTracker

if TYPE_CHECKING:
    from .config import CameraConfig
    from .publish import Publisher

log = logging.getLogger("percept.track_state")

SETTLE_EVENTS_MAX = 100_000  # events read after a snapshot that cannot be replayed (`settle_left_tracks`)


def end_left_tracks(publisher: Publisher, camera: CameraConfig, cfg: TrackerConfig, *, track_id_max: int) -> int:
    """End the open tracks a camera's snapshot left (restored as a next owner would, then ended
    at the newest frame it describes) when nobody will continue them: the camera was removed,
    or runs without tracking now. How many; 0 without an open snapshot (or one that cannot be
    continued: those are left; one whose frames cannot be replayed: those it settled). Under the
    camera's lease. Blocking: call it in a thread."""
    _, events, restored = restore_tracking(publisher, camera, cfg, track_id_max=track_id_max,
                                           file_time=is_file_url(camera.url) and not camera.realtime,
                                           check_source=False)
    if restored.last is None:
        return restored.settled
    n = len(events.open_tracks)
    end_tracks(publisher, camera.id, events, restored.last, TrackSnapshots(publisher, camera.id, every=0))
    log.info("camera %s: the %d open tracks its snapshot left end (nobody continues them)", camera.id, n)
    return n


@dataclass
class Restored:
    """What `restore_tracking` did: ``seq`` of the snapshot (None: started afresh), frames
    replayed, objects whose replayed id differed from the published one, and why not (if not)."""

    seq: int | None = None
    replayed: int = 0
    differed: int = 0
    why_not: str = ""
    last: tuple[int, float] | None = None  # (seq, frame_ts) of the newest frame the state describes
    settled: int = 0  # tracks ended at once, the frames since the snapshot not replayable (`settle_left_tracks`)


def open_tracking(
    publisher: Publisher, camera: CameraConfig, cfg: TrackerConfig, *, track_id_max: int, is_file: bool,
    lease_ttl_s: float = 0.0,
) -> tuple[ObjectTracker | None, EventEngine | None, TrackSnapshots | None]:
    """A starting camera's tracker, event engine and snapshot writer (all None without tracking),
    continuing what its previous owner left (`restore_tracking`). Blocking: call it in a thread."""
    if not cfg.enabled:  # (a snapshot an earlier version left open: its tracks end)
        end_left_tracks(publisher, camera, cfg, track_id_max=track_id_max)
        return None, None, None
    # a file starts from its beginning again: tracks an owner that died left open end (a clean
    # stop ended them), and its tracks start afresh (from the `closed` written, once it is in)
    if is_file and end_left_tracks(publisher, camera, cfg, track_id_max=track_id_max) and not publisher.flush(5.0):
        tracker = ObjectTracker(cfg, id_offset=track_id_max, fps=camera.fps, file_time=not camera.realtime)
        events = EventEngine.for_camera(camera, track_buffer=cfg.track_buffer, file_time=not camera.realtime)
        return tracker, events, TrackSnapshots(publisher, camera.id, every=cfg.snapshot_every, hands_over=False,
                                               source=source_of(camera))
    tracker, events, restored = restore_tracking(publisher, camera, cfg, track_id_max=track_id_max,
                                                 file_time=is_file and not camera.realtime, lease_ttl_s=lease_ttl_s)
    return tracker, events, TrackSnapshots(publisher, camera.id, every=cfg.snapshot_every, resumed=restored.last,
                                           hands_over=not is_file, source=source_of(camera))


def restore_tracking(
    publisher: Publisher, camera: CameraConfig, cfg: TrackerConfig, *, track_id_max: int, file_time: bool,
    check_source: bool = True, lease_ttl_s: float = 0.0,
) -> tuple[ObjectTracker, EventEngine, Restored]:
    """The camera's tracker and event engine: continued from its snapshot and the frames
    published since (see the module doc), or new ones (``Restored.why_not`` says why).
    ``check_source``: a snapshot of another source (`source_of`) ends its tracks instead.
    Blocking (Redis): call it in a thread."""
    state: Any = None

    def fresh(why: str, settled: int = 0) -> tuple[ObjectTracker, EventEngine, Restored]:
        tracker = ObjectTracker(cfg, id_offset=track_id_max, fps=camera.fps, file_time=file_time)
        events = EventEngine.for_camera(camera, track_buffer=cfg.track_buffer, file_time=file_time)
        try:  # the tracks start afresh, the pixel zones and lines stay in the frame size they were set in
            events.seed_pixel_sizes(state.get("events") or {})
        except (AttributeError, TypeError, ValueError, IndexError):  # no snapshot, or not one that says
            pass
        return tracker, events, Restored(why_not=why, settled=settled)

    raw = publisher.client.hget(publisher.keys.trackstate(camera.id), "json")
    if raw is None:
        return fresh("no snapshot")
    try:
        state = json.loads(raw)
        if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA or state.get("camera") != camera.id:
            raise ValueError(f"not a {STATE_SCHEMA} snapshot of camera {camera.id!r}")
        if state.get("closed"):
            return fresh("closed")
        seq, since, tracker, events = _snapshot_parts(state, camera, cfg, file_time)
    except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError, IndexError) as exc:  # (a part that is no object)
        log.warning("camera %s: track state not restored: %s", camera.id, exc)
        return fresh(f"unreadable: {exc}")
    try:
        frames = track_replay.published_after(publisher, camera.id, seq, since,
                                              limit=max(10 * cfg.snapshot_every, 1000))
    except (ValueError, redis.ResponseError) as exc:
        log.warning("camera %s: track state not restored: %s", camera.id, exc)
        return fresh(str(exc), _settled(publisher, camera, cfg, state))
    done = Restored(seq, last=(seq, since))
    # open tracks the tracker's snapshot left out (past its 512): held open through the replay, as
    # their owner held them (ended there, their track_end was dropped with the replay's events)
    held = set(events.open_tracks) - tracker.alive_ids()
    try:
        _replay(frames, tracker, events, held, done, camera)
    except _NotReplayed as exc:
        log.warning("camera %s: track state not restored: %s: %s", camera.id, exc, exc.__cause__)
        return fresh(str(exc.__cause__), _settled(publisher, camera, cfg, state))
    if held and done.replayed:  # those their owner ended since go; the others end at the first live frame
        events.apply_published(track_replay.ended_since(publisher, camera.id, seq, since, held))
    events.take_counts()
    if check_source and state.get("source", source_of(camera)) != source_of(camera):  # (older ones name none)
        log.info("camera %s: its URL changed since its snapshot: its %d open tracks end", camera.id, len(events.open_tracks))
        end_tracks(publisher, camera.id, events, done.last, TrackSnapshots(publisher, camera.id, every=0))
        return fresh("another source")
    tracker.raise_next_id(track_id_max)
    tracker.resume_across_pause(lease_ttl_s)  # the handover's pause: a track goes on where the next frame finds it
    if check_source:  # (else restored to be ended, `end_left_tracks`, which says so: "continued" contradicted it)
        log.info("camera %s: %d open tracks continued from seq %d (+%d frames replayed, %d ids differed)",
                 camera.id, len(events.open_tracks), seq, done.replayed, done.differed)
    return tracker, events, done


def _snapshot_parts(state: Mapping[str, Any], camera: CameraConfig, cfg: TrackerConfig,
                    file_time: bool) -> tuple[int, float, ObjectTracker, EventEngine]:
    """The snapshot's (seq, frame_ts), tracker and event engine; raises what a damaged one gives."""
    seq, since = int(state["seq"]), float(state["frame_ts"])
    if not (math.isfinite(since) and since >= 0):  # (-1 made the replay's stream id a Redis error)
        raise ValueError(f"frame_ts {since}")
    tracker = ObjectTracker.restore(state["tracker"], cfg, fps=camera.fps, file_time=file_time)
    # the frames since were published under the snapshot's zones and lines (a change makes a
    # snapshot at once): replayed under them, the camera's own from the next frame on
    drawn = state["events"]
    margins = {k: float(drawn.get(k, v)) for k, v in margins_of(camera).items()}  # (the snapshot's too)
    events = EventEngine.restore(drawn, camera.id, drawn.get("zones", camera.zones), drawn.get("lines", camera.lines),
                                 anchor=drawn.get("anchor") or camera.anchor, track_buffer=cfg.track_buffer,
                                 file_time=file_time, **margins)
    return seq, since, tracker, events


class _NotReplayed(Exception):
    """A replay that failed: its message says where, its ``__cause__`` what."""


def _replay(frames: Any, tracker: ObjectTracker, events: EventEngine, held: set, done: Restored,
            camera: CameraConfig) -> None:
    """The frames published since the snapshot through the tracker (it adopts their ids) and the
    engine (their events are on the stream already), then the camera's own zones and lines."""
    replaying: int | None = None  # the seq of the frame being replayed
    try:
        for result in frames:
            replaying = result.meta.seq
            ours = tracker.update(result.objects, (result.meta.height, result.meta.width),
                                  ts=tracker.time_of(result.meta))
            done.differed += tracker.adopt_ids(ours.track_ids, result.objects.track_ids)
            events.update(result, tracker.alive_ids() | held, tracker.origins)
            done.replayed += 1
            done.last = (result.meta.seq, result.meta.frame_ts)
            size = (result.meta.width, result.meta.height)
        replaying = None
        events.reconfigure(camera.zones, camera.lines, anchor=camera.anchor, **margins_of(camera))
        if done.replayed:  # the camera's own zones and lines fit its frames (else it cannot go on)
            events.geometry(*size)
    except Exception as exc:  # noqa: BLE001 - a zone that no longer fits the frame (GeometryError), a damaged track, …
        where = f"replaying seq {replaying}" if replaying is not None else "its zones and lines on its frames"
        raise _NotReplayed(where) from exc


def _newest_frame(publisher: Publisher, camera_id: str) -> tuple[int, float] | None:
    """(seq, frame_ts) of the camera's newest published frame; None if none can be read. Primes
    the publisher's id clock with it (`Publisher.last_published`): events written next get ids
    above the stream's top."""
    newest = publisher.newest_entry(camera_id)
    try:
        payload = json.loads(newest[1][b"json"])  # type: ignore[index]
        return int(payload["seq"]), float(payload["frame_ts"])
    except (KeyError, TypeError, ValueError):
        return None


def _settled(publisher: Publisher, camera: CameraConfig, cfg: TrackerConfig, state: Mapping[str, Any]) -> int:
    """`settle_left_tracks`, or 0 where a damaged snapshot cannot say which tracks it left open."""
    try:
        return settle_left_tracks(publisher, camera, cfg, state)
    except redis.ConnectionError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged snapshot never keeps its camera from starting
        log.warning("camera %s: the tracks its snapshot left open are not ended: %s", camera.id, exc)
        return 0


def settle_left_tracks(publisher: Publisher, camera: CameraConfig, cfg: TrackerConfig, state: Mapping[str, Any]) -> int:
    """A readable snapshot whose frames cannot be replayed (too many since, a zone that no longer
    fits): its open tracks, and those started since, end once, at the camera's newest frame —
    brought up to the events stream first (`EventEngine.apply_published`), so that a track that
    ended since does not end twice. How many ended (more than `SETTLE_EVENTS_MAX` events since:
    none, logged)."""
    events = EventEngine.restore(state["events"], camera.id, camera.zones, camera.lines, anchor=camera.anchor,
                                 track_buffer=cfg.track_buffer, file_time=bool(state["events"].get("file_time")),
                                 **margins_of(camera))
    seq, since = int(state["seq"]), float(state["frame_ts"])
    if track_replay.trimmed_after(publisher, camera.id, int(since * 1000)):
        log.warning("camera %s: its events since its snapshot were trimmed (redis.maxlen): its open tracks are "
                    "left without track_end (some may have ended already)", camera.id)
        return 0
    payloads: list[dict[str, Any]] = []
    for payload in track_replay.events_since(publisher, camera.id, seq, since):
        payloads.append(payload)
        if len(payloads) > SETTLE_EVENTS_MAX:
            log.warning("camera %s: more than %d events since its snapshot: its open tracks are left without "
                        "track_end", camera.id, SETTLE_EVENTS_MAX)
            return 0
    events.apply_published(payloads)
    n = len(events.open_tracks)
    newest = _newest_frame(publisher, camera.id) or (seq, since)  # (ids above the top, too)
    end_tracks(publisher, camera.id, events, newest, TrackSnapshots(publisher, camera.id, every=0))
    log.info("camera %s: the %d tracks its snapshot and the events since left open end", camera.id, n)
    return n
